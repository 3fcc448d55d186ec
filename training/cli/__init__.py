"""``zoo`` command line: models, predictions, slides and cohorts, evaluation, publishing, training and
compression.

Each command group lives in its own module and adds its sub-commands with ``add_commands``.

Exit status:

* ``0``: done.
* ``2``: a user error: bad arguments, an unknown model or tag, missing or tampered weights, a backend or
  precision that cannot run the model, a recipe or override that does not validate, a dataset in the wrong
  layout, an image that cannot be decoded, or a file that cannot be read or written (missing, permission
  denied, disk full). One line on stderr, ``zoo <command>: error: <what is wrong and what to do>``, and no
  traceback; ``--debug`` shows it.
* ``130``: interrupted (Ctrl-C). ``zoo train`` and ``zoo finetune`` resume from their last complete
  epoch when the same command is run again.
* ``1``: anything else is a bug: Python's traceback, please report it.
"""

from __future__ import annotations

import argparse
import errno
import sys
import warnings
from collections.abc import Sequence

from . import compress, evaluate, models, publish, slide, train

__all__ = ['main', 'user_errors']

# Commands that continue where they stopped when run again (checkpoints), which Ctrl-C's message says.
_RESUMABLE = {'train', 'finetune', 'compress'}


class _Parser(argparse.ArgumentParser):
    """argparse's parser, reporting a bad command line in one line (exit status 2) instead of usage + error."""

    def error(self, message: str):
        self.exit(2, f'{self.prog}: error: {message} (see {self.prog} --help)\n')


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog='zoo', description=__doc__.splitlines()[0])
    parser.add_argument('--debug', action='store_true', help='show tracebacks of user errors')
    sub = parser.add_subparsers(dest='subcommand', required=True)
    for group in (models, publish, slide, train, evaluate, compress):
        group.add_commands(sub)
    for command in sub.choices.values():  # `zoo train --debug ...` as well as `zoo --debug train ...`
        command.add_argument(
            '--debug', action='store_true', default=argparse.SUPPRESS, help='show tracebacks of user errors'
        )
    return parser


def user_errors() -> tuple[type[BaseException], ...]:
    """The exception types that mean the input is wrong (exit 2, one line), not that the zoo has a bug."""
    import zoo
    from training.data import DatasetLayoutError
    from training.errors import RecipeError, RunError
    from zoo.inference import InferenceError
    from zoo.io import ImageReadError
    from zoo.slide import SlideError

    return (
        zoo.UnknownModelError,
        zoo.WeightsError,
        RecipeError,
        DatasetLayoutError,
        ImageReadError,
        InferenceError,
        SlideError,
        RunError,
        zoo.CompressionError,
    )


def _one_line(error: BaseException) -> str:
    return ' '.join(str(error).split())


def _describe_os_error(error: OSError) -> str:
    """A filesystem error in one line, with what to do about the common ones."""
    where = f'{error.filename}: ' if error.filename else ''
    what = error.strerror or _one_line(error)
    advice = {
        errno.ENOSPC: 'free some space or write elsewhere',
        errno.EDQUOT: 'free some space or write elsewhere',
        errno.EACCES: 'check the permissions or write elsewhere',
        errno.EPERM: 'check the permissions or write elsewhere',
        errno.EROFS: 'write elsewhere',
        errno.ENOENT: 'check the path',
        errno.EEXIST: 'a file is in the way: move it, or write elsewhere',
        errno.ENOTDIR: 'a file is in the way: move it, or write elsewhere',
    }.get(error.errno)
    return f'{where}{what}' + (f'; {advice}' if advice else '')


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command = f'zoo {args.subcommand}'

    def show_warning(message, *_args, **_kwargs):  # one line, as errors are (not Python's file:line + code)
        print(f'{command}: warning: {_one_line(message)}', file=sys.stderr)

    try:
        with warnings.catch_warnings():
            warnings.showwarning = show_warning
            args.func(args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        resume = '; run the same command again to resume from the last complete epoch'
        print(f'{command}: interrupted{resume if args.subcommand in _RESUMABLE else ""}', file=sys.stderr)
        return 130
    except user_errors() as e:
        if args.debug:
            raise
        print(f'{command}: error: {_one_line(e)}', file=sys.stderr)
        return 2
    except OSError as e:
        if args.debug or e.errno is None:  # no errno: not the filesystem (e.g. a decoder's message), a bug
            raise
        print(f'{command}: error: {_describe_os_error(e)}', file=sys.stderr)
        return 2
    return 0
