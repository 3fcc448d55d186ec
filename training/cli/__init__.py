"""``zoo`` command line: list, info, predict, publish, train and finetune.

Each command group lives in its own module and adds its sub-commands with ``add_commands``. Every
command turns the zoo's own errors (unknown model, missing or tampered weights, bad layout, bad recipe)
into a one-line message and exit status 2 instead of a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import models, publish, train

__all__ = ['main']


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='zoo', description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest='subcommand', required=True)
    for group in (models, publish, train):
        group.add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    import zoo
    from training.data import DatasetLayoutError
    from training.errors import RunError
    from training.recipe import RecipeError

    try:
        args.func(args)
    except (zoo.UnknownModelError, zoo.WeightsError, RecipeError, DatasetLayoutError, RunError, FileNotFoundError) as e:
        print(f'zoo {args.subcommand}: error: {e}', file=sys.stderr)
        return 2
    return 0
