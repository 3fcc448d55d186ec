"""Options and messages shared by the commands that run a network (``zoo predict``, ``zoo segment-slide``):
``--backend`` and ``--precision`` (:func:`zoo.inference.compile`), and warnings and the backends' log lines (an
export, ``auto``'s choice) shown as one line each on stderr."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import warnings
from collections.abc import Iterator


def add_backend_options(parser: argparse.ArgumentParser) -> None:
    """``--backend`` and ``--precision``, checked by :func:`zoo.inference.check_backend` when the command runs (so
    that building the parser does not import the zoo)."""
    parser.add_argument(
        '--backend',
        default='torch',
        help='how the network runs: torch (eager, the default), onnxruntime or openvino (exported to ONNX once, '
        'cached in $ZOO_CACHE_DIR), or auto (the fastest here whose outputs match eager fp32)',
    )
    parser.add_argument(
        '--precision',
        default='fp32',
        help='fp32 (the default) or bf16 (torch; openvino on CPUs with bf16 instructions; allowed, with auto)',
    )


@contextlib.contextmanager
def one_line_messages(command: str, *categories: type[Warning]) -> Iterator[None]:
    """Inside: ``zoo.inference``'s log lines (an export, ``auto``'s choice) as ``zoo <command>: <message>`` on
    stderr, and each warning of ``categories`` and of the backends shown every time it is raised (``main`` prints
    every warning as one line)."""
    from zoo.inference import InferenceWarning

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f'zoo {command}: %(message)s'))
    logger = logging.getLogger('zoo.inference')
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with warnings.catch_warnings():
            for category in (InferenceWarning, *categories):
                warnings.simplefilter('always', category)
            yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
