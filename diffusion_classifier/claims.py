"""Healing resume and claims: which records of a folder are usable, broken ones moved aside, one process per record."""
from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

from .errors import warn
from .interrupts import critical
from .records import load_failure, load_record, save_record

CORRUPT_SUFFIX = ".corrupt"
CLAIM_SUFFIX = ".claim"
_HELD: set[Path] = set()  # claim files this process holds, over all Claims objects


def inspect_record(path: str | Path, required=()) -> tuple[object | None, str | None]:
    """(record, None) if `path` holds a usable record, (None, why not) if it is broken, (None, None) if absent.

    `required`: the keys a dict record must have, or a function record -> None or what is wrong with it.
    """
    path = Path(path)
    if not path.is_file():
        return None, None
    try:
        record = load_record(path)
    except Exception as e:  # noqa: BLE001 - truncated copies, foreign files: all are "unreadable"
        return None, f"unreadable with torch.load(weights_only=True): {load_failure(e)}"
    if callable(required):
        problem = required(record)
        return (None, problem) if problem else (record, None)
    if required:
        if not isinstance(record, dict):
            return None, f"expected a dict with keys {', '.join(required)}, found {type(record).__name__}"
        missing = [k for k in required if k not in record]
        if missing:
            return None, f"missing key(s) {', '.join(missing)}"
    return record, None


def quarantine(path: str | Path, reason: str) -> Path | None:
    """Move a broken record aside to <name>.corrupt (or .corrupt.N), say so on stderr; the new name."""
    path = Path(path)
    dest = path.with_name(path.name + CORRUPT_SUFFIX)
    k = 1
    while dest.exists():
        dest = path.with_name(f"{path.name}{CORRUPT_SUFFIX}.{k}")
        k += 1
    try:
        os.replace(path, dest)
    except FileNotFoundError:
        return None
    warn(f"{path}: {reason}; moved aside to {dest.name}, recomputing it")
    return dest


def claim_timeout() -> float:
    """Seconds after which a claim that was not refreshed counts as abandoned (env DIFFUSION_CLASSIFIER_CLAIM_TIMEOUT)."""
    return float(os.environ.get("DIFFUSION_CLASSIFIER_CLAIM_TIMEOUT", "900"))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Claims:
    """Claim files <record>.claim made by exclusive create: one process computes a record at a time.

    A claim holds pid, host and time and is refreshed (mtime) while held. A claim is stale, and taken
    over, when its pid is dead on this host, or when it was not refreshed for `timeout` seconds.
    """

    def __init__(self, timeout: float | None = None):
        self.timeout = claim_timeout() if timeout is None else timeout
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.held: set[Path] = set()  # this object's claims (all of the process's are in _HELD)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _info(self) -> str:
        return json.dumps({"pid": self.pid, "host": self.host, "time": time.time()})

    def _stale(self, claim: Path) -> tuple[bool, tuple | None]:
        try:
            text, mtime = claim.read_text(), claim.stat().st_mtime
        except FileNotFoundError:
            return False, None
        except OSError:
            return False, None
        old = time.time() - mtime > self.timeout
        try:
            info = json.loads(text)
            pid, host = int(info["pid"]), str(info["host"])
        except (ValueError, KeyError, TypeError):
            return old, (text, mtime)  # still being written, or garbage: judged by age
        if host == self.host:
            if pid == self.pid:
                return claim not in _HELD, (text, mtime)  # left by an earlier process with our pid
            return not _pid_alive(pid), (text, mtime)
        return old, (text, mtime)

    def _take_over(self, claim: Path) -> bool:
        stale, seen = self._stale(claim)
        if not stale:
            return False
        lock = claim.with_name(claim.name + ".takeover")
        try:
            os.close(os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:
            try:
                if time.time() - lock.stat().st_mtime > 60:
                    lock.unlink(missing_ok=True)  # a takeover lock left by a killed process
            except OSError:
                pass
            return False
        try:
            again, seen_again = self._stale(claim)
            if not again or seen_again != seen:
                return False
            claim.unlink(missing_ok=True)
            return True
        finally:
            lock.unlink(missing_ok=True)

    def acquire(self, path: str | Path) -> bool:
        """Claim the record at `path`; False if another live process holds it."""
        claim = Path(str(path) + CLAIM_SUFFIX)
        for attempt in range(2):
            try:
                fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if attempt == 0 and self._take_over(claim):
                    continue
                return False
            with critical(), os.fdopen(fd, "w") as f:
                f.write(self._info())
            self.held.add(claim)
            _HELD.add(claim)
            self._start_refresh()
            return True
        return False

    def release(self, path: str | Path) -> None:
        claim = Path(str(path) + CLAIM_SUFFIX)
        if claim in self.held:
            self.held.discard(claim)
            _HELD.discard(claim)
            claim.unlink(missing_ok=True)

    def release_all(self) -> None:
        for claim in list(self.held):
            self.held.discard(claim)
            _HELD.discard(claim)
            claim.unlink(missing_ok=True)
        self._stop.set()

    def _start_refresh(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._refresh, daemon=True)
            self._thread.start()

    def _refresh(self) -> None:
        while not self._stop.wait(max(self.timeout / 4, 0.5)):
            for claim in list(self.held):
                try:
                    os.utime(claim)
                except OSError:
                    pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release_all()


class RecordFolder:
    """Resume bookkeeping of one run folder: usable records, broken ones healed, claims while computing.

    `required` are the keys a record must have (or a function, see inspect_record); `check(path, record)` may raise for a record that is
    readable but does not belong here (e.g. another class's record in a DiT class folder).
    """

    def __init__(self, folder: str | Path, required=(), check=None):
        self.folder = Path(folder)
        self.required = required if callable(required) else tuple(required)
        self.check = check
        self.claims = Claims()
        self.repaired = 0  # broken records moved aside and recomputed by this process
        self.busy = 0  # records another live process was computing
        self.done_elsewhere = 0  # records another process finished after this one looked

    def usable(self, path: Path):
        """The record at `path` if it is usable, else None (absent or broken)."""
        record, _ = inspect_record(path, self.required)
        if record is not None and self.check is not None:
            self.check(path, record)
        return record

    def claim_next(self, items, k: int, path_of) -> list:
        """Claim up to k of the remaining `items` (an iterator) whose record is missing or broken.

        Items held by another process are left to it, items finished meanwhile are skipped, and a
        broken record is moved aside (reported once) before its item is handed out for recomputing.
        """
        group = []
        for item in items:
            path = path_of(item)
            if not self.claims.acquire(path):
                self.busy += 1
                continue
            record, problem = inspect_record(path, self.required)
            if record is not None:
                self.claims.release(path)
                self.done_elsewhere += 1
                continue
            if problem is not None and quarantine(path, problem) is not None:
                self.repaired += 1
            group.append(item)
            if len(group) == k:
                break
        return group

    def save(self, record, path: Path) -> None:
        """Write a record atomically, then drop its claim."""
        save_record(record, path)
        self.claims.release(path)

    def close(self) -> None:
        self.claims.release_all()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
