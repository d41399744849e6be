"""Healing resume and claims: which records of a folder are usable, broken ones moved aside, one process per record."""
from __future__ import annotations

import errno
import json
import os
import socket
import tempfile
import threading
import time
from pathlib import Path

from .errors import StorageError, warn
from .interrupts import critical
from .records import load_failure, load_record, remove_quietly, save_record, storage_error, storing

CORRUPT_SUFFIX = ".corrupt"
CLAIM_SUFFIX = ".claim"
# os.link's errors on a file system without hard links (the claim is then created in place)
NO_HARD_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS}
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
        with storing(path, "moving aside the broken record", "the broken record was left in place"):
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


def write_all(fd: int, data: bytes) -> None:
    """os.write until every byte is written (a write may take only part)."""
    while data:
        data = data[os.write(fd, data):]


class Claims:
    """Claim files <record>.claim made by exclusive create: one process computes a record at a time.

    A claim holds pid, host and time, is written whole (a temporary file hard-linked into place) and is
    refreshed (mtime) while held. A claim is free, and taken over, when it is empty or unparsable (a
    leftover), when its pid is dead on this host, or when it was not refreshed for `timeout` seconds.
    A full disk or a folder that cannot be written is a StorageError (records.storage_error), and a
    claim this process made is never left behind on the way out.
    """

    def __init__(self, timeout: float | None = None):
        self.timeout = claim_timeout() if timeout is None else timeout
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.held: set[Path] = set()  # this object's claims (all of the process's are in _HELD)
        self.failure: StorageError | None = None  # a refresh that failed in the background thread
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
            return True, (text, mtime)  # claims appear whole (_create): an empty or garbled one is a leftover
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
        with storing(claim, "taking over the stale claim", "no claim was left behind"):
            if not self._lock(lock):
                return False
            try:
                again, seen_again = self._stale(claim)
                if not again or seen_again != seen:
                    return False
                claim.unlink(missing_ok=True)
                return True
            finally:
                remove_quietly(lock)

    @staticmethod
    def _lock(lock: Path) -> bool:
        """Create the takeover lock exclusively; False while another process holds it. A lock older than a
        minute was left by a process killed while taking over: it is removed and the lock made anew."""
        for attempt in range(2):
            try:
                os.close(os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
                return True
            except FileExistsError:
                try:
                    if attempt or time.time() - lock.stat().st_mtime <= 60:
                        return False
                    lock.unlink(missing_ok=True)
                except FileNotFoundError:
                    pass  # released meanwhile: try again
                except OSError:
                    return False
        return False

    def _create(self, claim: Path) -> bool:
        """Create `claim` holding this process's pid, host and time; False if it exists.

        The content goes into a temporary file that is then hard-linked to the claim's name (exclusive,
        like O_EXCL), so a claim is never seen empty or half-written while its owner lives.
        """
        with storing(claim, "writing the claim", "no claim was left behind"):
            fd, tmp = tempfile.mkstemp(dir=claim.parent, prefix=f".{claim.name}.", suffix=".tmp")
            try:
                try:
                    write_all(fd, self._info().encode())
                finally:
                    os.close(fd)
                try:
                    os.link(tmp, claim)
                except FileExistsError:
                    return False
                except OSError as e:
                    if e.errno not in NO_HARD_LINKS:
                        raise
                    return self._create_in_place(claim)
            finally:
                remove_quietly(tmp)
        return True

    def _create_in_place(self, claim: Path) -> bool:
        """_create without hard links: exclusive create, then one write (empty for an instant)."""
        try:
            fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        try:
            try:
                write_all(fd, self._info().encode())
            finally:
                os.close(fd)
        except BaseException:
            remove_quietly(claim)  # made by this process and not written whole: never left behind
            raise
        return True

    def check(self) -> None:
        """Raise the StorageError of a claim refresh that failed in the background."""
        if self.failure is not None:
            raise self.failure

    def acquire(self, path: str | Path) -> bool:
        """Claim the record at `path`; False if another live process holds it."""
        self.check()
        claim = Path(str(path) + CLAIM_SUFFIX)
        for attempt in range(2):
            with critical():  # a claim that exists is in `held`, so the way out releases it
                if self._create(claim):
                    self.held.add(claim)
                    _HELD.add(claim)
                    self._start_refresh()
                    return True
            if attempt == 0 and self._take_over(claim):
                continue
            return False
        return False

    def _unlink(self, claim: Path) -> None:
        self.held.discard(claim)
        _HELD.discard(claim)
        with storing(claim, "releasing the claim", "the claim is free once this process ends"):
            claim.unlink(missing_ok=True)

    def release(self, path: str | Path) -> None:
        claim = Path(str(path) + CLAIM_SUFFIX)
        if claim in self.held:
            self._unlink(claim)
        self.check()

    def release_all(self, quiet: bool = False) -> None:
        """Drop every claim; one that cannot be removed is a StorageError unless `quiet` (an error is leaving)."""
        self._stop.set()
        failed = None
        for claim in list(self.held):
            try:
                self._unlink(claim)
            except StorageError as e:
                failed = failed or e
        if failed is not None and not quiet:
            raise failed

    def _start_refresh(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._refresh, daemon=True)
            self._thread.start()

    def _refresh(self) -> None:
        while not self._stop.wait(max(self.timeout / 4, 0.5)):
            for claim in list(self.held):
                try:
                    os.utime(claim)
                except OSError as e:  # reported by the main thread's next claim or release (check)
                    error = storage_error(e, claim, "refreshing the claim",
                                          "this run's claims are dropped on the way out")
                    if error is not None and self.failure is None:
                        self.failure = error

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        self.release_all(quiet=exc_type is not None)


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

    def close(self, quiet: bool = False) -> None:
        """Release every claim; `quiet`: an error is leaving, which a claim that cannot be removed must not hide."""
        self.claims.release_all(quiet)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        self.close(quiet=exc_type is not None)
