"""User errors: bad flags, files, data or models that the entry points report in one line.

Everything else (a bug) keeps its traceback. Each type is also the built-in exception it refines,
so code that catches ValueError or FileNotFoundError keeps working.
"""
from __future__ import annotations


class UserError(Exception):
    """An error caused by the user's input: its message says what was expected and what was found."""


class InputError(UserError, ValueError):
    """A flag, argument or file content that is not what was expected."""


class MissingError(UserError, FileNotFoundError):
    """A model, dataset or file that is not where it was expected."""


class MissingPackageError(UserError, ImportError):
    """An optional package that a chosen option needs is not installed."""


class StorageError(UserError, OSError):
    """A result could not be written (disk full, folder not writable); nothing finished was lost."""


def warn(message: str) -> None:
    """A one-line warning on stderr (`warning: ...`) about input that is used anyway."""
    import sys

    print(f"warning: {' '.join(message.split())}", file=sys.stderr)
