"""SIGINT/SIGTERM as a clean stop: raised between records, never in the middle of writing one.

`install()` (done by the command-line boundary) turns both signals into `Interrupted`. Code that must
not be cut in half (an atomic record write and its rename) runs inside `critical()`: a signal that
arrives there is held and raised as soon as the section ends, so the record is either complete or
was never started.
"""
from __future__ import annotations

import contextlib
import signal

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}

_depth = 0
_pending: int | None = None


class Interrupted(BaseException):
    """The process got SIGINT or SIGTERM; like KeyboardInterrupt, `except Exception` does not catch it."""

    def __init__(self, signum: int):
        self.signum = int(signum)
        super().__init__(signal.Signals(signum).name)

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.signum, 128 + self.signum)


def _handler(signum, frame):  # noqa: ARG001 - signal handler signature
    global _pending
    if _depth:
        if _pending is None:
            _pending = signum
        return
    raise Interrupted(signum)


def install() -> dict:
    """Route SIGINT and SIGTERM through Interrupted (main thread only, as Python requires); the old handlers."""
    return {sig: signal.signal(sig, _handler) for sig in EXIT_CODES}


def restore(previous: dict) -> None:
    """Put back the handlers install() replaced."""
    for sig, handler in previous.items():
        signal.signal(sig, handler)


@contextlib.contextmanager
def critical():
    """Hold SIGINT/SIGTERM while the body runs; raise Interrupted right after it if one came."""
    global _depth, _pending
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
    if _depth == 0 and _pending is not None:
        signum, _pending = _pending, None
        raise Interrupted(signum)
