"""Storage faults injected into every write of a run: one StorageError line, nothing left behind, a clean resume.

The faults are real OSErrors raised by the os functions the code calls (os.open, os.write, os.fsync,
os.link, os.replace, os.unlink, os.mkdir, os.utime), patched to fail for one file; the messages are
compared with the exact line a user reads.
"""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from diffusion_classifier.claims import CLAIM_SUFFIX, Claims
from diffusion_classifier.data.images import Unreadable
from diffusion_classifier.errors import StorageError
from diffusion_classifier.loop import RecordLoop
from diffusion_classifier.records import MANIFEST, check_manifest, load_record, record_path

ROOT = Path(__file__).resolve().parents[1]
ERRNOS = {"ENOSPC": errno.ENOSPC, "EROFS": errno.EROFS, "EACCES": errno.EACCES, "EDQUOT": errno.EDQUOT}
KEYS = [1, 2, 3, 4, 5, 6]
N_DIGITS_TEST = 359  # images in the digits test split


def expected_line(code: int, action: str, target: Path, left: str, folder: Path | None = None) -> str:
    """The message a user reads for a storage fault (docs/failures.md, "Storage")."""
    reason = os.strerror(code)
    if code == errno.ENOSPC:
        head, fix = f"no space left on the device while {action} {target} ({reason})", "free space"
    elif code == errno.EDQUOT:
        head, fix = f"disk quota exceeded while {action} {target} ({reason})", "free space within your quota"
    else:
        folder = folder or target.parent
        head, fix = f"cannot write in {folder} ({reason}) while {action} {target}", f"make {folder} writable"
    return (f"{head}; {left} and every record already written is intact: {fix} (or pass another --log_dir) "
            f"and re-run the same command to resume")


# ---------------------------------------------------------------- fault injection


def _target(name: str, args: tuple) -> str:
    """The path an os call works on (for a file descriptor: the file it is open on)."""
    if name in ("write", "fsync"):
        try:
            return os.readlink(f"/proc/self/fd/{args[0]}")
        except OSError:
            return ""
    return os.fspath(args[1] if name in ("replace", "link") else args[0])


def inject(monkeypatch, name: str, code: int, pattern: str, after: int = 0, half: bool = False) -> list:
    """Make os.<name> raise OSError(code) on paths matching `pattern`, from the (after+1)-th such call on.

    `half`: an os.write first writes half of its bytes (a disk that fills mid-write). Returns the paths hit.
    """
    real = getattr(os, name)
    hits = []

    def fault(*args, **kwargs):
        path = _target(name, args)
        if re.search(pattern, path):
            hits.append(path)
            if len(hits) > after:
                if half:
                    real(args[0], args[1][: len(args[1]) // 2])
                raise OSError(code, os.strerror(code), path)
        return real(*args, **kwargs)

    monkeypatch.setattr(os, name, fault)
    return hits


# ---------------------------------------------------------------- the loop under faults


def _path(folder: Path, key: int) -> Path:
    return record_path(folder, key, 100)


def _claim(folder: Path, key: int) -> Path:
    return Path(str(_path(folder, key)) + CLAIM_SUFFIX)


def _load(keys):
    return [(k, k * k) for k in keys], []


def _run(folder: Path, keys=KEYS, size: int = 2, wait: bool = False):
    """One run of a task over `keys` in `folder`: the manifest, then the loop (records {"value", "pred", "label"})."""
    seen = []
    check_manifest(folder, {"task": "squares"})
    early = [Unreadable(9, "img9.png", "a truncated PNG")]  # listed in the manifest when the loop starts
    with RecordLoop(folder, partial(_path, folder), ("value", "pred", "label"), show_progress=False,
                    skip_unreadable=True, unreadable=early) as loop:
        for group in loop.groups(keys, _load, size, wait=wait):
            for k, item in group:
                seen.append(k)
                loop.save(k, {"value": item, "pred": 0, "label": 0}, correct=True)
    return loop.stats, seen


def _leftovers(folder: Path) -> list[str]:
    """Files other than records, moved-aside records and the manifest: claims, temporary files, takeover locks."""
    return sorted(p.name for p in folder.iterdir() if not re.fullmatch(r"\d+\.pt(\.corrupt)?|manifest\.json", p.name))


def _usable(folder: Path) -> set[int]:
    keys = set()
    for p in folder.glob("*.pt"):
        try:
            if load_record(p)["value"] == int(p.stem) ** 2:
                keys.add(int(p.stem))
        except Exception:  # noqa: BLE001 - the broken record of the setup
            pass
    return keys


# site: (os function, pattern of its path, half write, action, target, what the message says was cleaned up)
SITES = {
    "claim_create": ("open", r"/\.05\.pt\.claim\.\w+\.tmp$", False, "writing the claim", "claim",
                     "no claim was left behind"),
    "claim_write": ("write", r"/\.05\.pt\.claim\.\w+\.tmp$", True, "writing the claim", "claim",
                    "no claim was left behind"),
    "claim_link": ("link", r"/05\.pt\.claim$", False, "writing the claim", "claim", "no claim was left behind"),
    "claim_takeover": ("open", r"/05\.pt\.claim\.takeover$", False, "taking over the stale claim", "claim",
                       "no claim was left behind"),
    "claim_release": ("unlink", r"/05\.pt\.claim$", False, "releasing the claim", "claim",
                      "the claim is free once this process ends"),
    "record_create": ("open", r"/\.05\.pt\.\w+\.tmp$", False, "writing", "record", "no file was left behind"),
    "record_fsync": ("fsync", r"/\.05\.pt\.\w+\.tmp$", False, "writing", "record", "the partial file was removed"),
    "record_replace": ("replace", r"/05\.pt$", False, "writing", "record", "the partial file was removed"),
    "manifest": ("fsync", r"/\.manifest\.json\.\w+\.tmp$", False, "writing", "manifest",
                 "the partial file was removed"),
    "corrupt_move": ("replace", r"/03\.pt\.corrupt$", False, "moving aside the broken record", "broken",
                     "the broken record was left in place"),
}


@pytest.mark.parametrize("code", list(ERRNOS), ids=list(ERRNOS))
@pytest.mark.parametrize("site", list(SITES))
def test_a_storage_fault_is_one_storage_error_leaving_nothing_behind(tmp_path, monkeypatch, site, code):
    code = ERRNOS[code]
    name, pattern, half, action, what, left = SITES[site]
    folder = tmp_path / "run"
    _run(folder, [1, 2, 3])
    _path(folder, 3).write_bytes(b"half a record")  # broken: healed (moved aside) by the next run
    if site == "claim_takeover":  # a claim left by a dead process on this host
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        _claim(folder, 5).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "time": time.time()}))
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    with monkeypatch.context() as m:
        hits = inject(m, name, code, pattern, half=half)
        with pytest.raises(StorageError) as e:
            _run(folder)
    assert hits, "the fault was never reached"
    target = {"claim": _claim(folder, 5), "record": _path(folder, 5), "manifest": folder / MANIFEST,
              "broken": _path(folder, 3)}[what]
    assert str(e.value) == expected_line(code, action, target, left)
    assert isinstance(e.value.__cause__, OSError) and e.value.__cause__.errno == code

    # nothing this process made is left behind; what was there before is unchanged
    kept_claims = {"claim_takeover": [_claim(folder, 5).name],  # the dead process's, untouched
                   "claim_release": [_claim(folder, 5).name]}.get(site, [])  # could not be removed: ours, free
    assert _leftovers(folder) == kept_claims
    assert {k: (folder / k).read_bytes() for k in ("01.pt", "02.pt")} == {k: before[k] for k in ("01.pt", "02.pt")}
    if site == "corrupt_move":
        assert _path(folder, 3).read_bytes() == b"half a record"
    written = _usable(folder)
    assert {1, 2} <= written and 6 not in written  # 5 is written only when its claim's release failed
    assert (5 in written) == (site == "claim_release")

    # the fault gone, the next run resumes at once: no claim to wait for (wait=True would sleep on one)
    monkeypatch.setattr("diffusion_classifier.loop.time.sleep", lambda s: pytest.fail("the resume waited"))
    stats, seen = _run(folder, wait=True)
    assert seen == sorted(set(KEYS) - written) and stats.elsewhere == 0 and stats.done == len(seen)
    assert _usable(folder) == set(KEYS)
    assert _leftovers(folder) == (kept_claims if site == "claim_release" else [])  # the resume left its claims
    assert json.loads((folder / MANIFEST).read_text())["unreadable"] == {"9": "img9.png: a truncated PNG"}
    if site == "claim_release":  # the claim of a finished record: free to anyone
        claims = Claims()
        assert claims.acquire(_path(folder, 5))
        claims.release_all()


class FillingFile:
    """The file os.fdopen opened, on a disk that is full after `room` more bytes."""

    def __init__(self, f, code: int, room: int):
        self.f, self.code, self.room = f, code, room

    def write(self, data) -> int:
        if len(data) > self.room:
            self.f.write(bytes(data[: self.room]))
            self.room = 0
            raise OSError(self.code, os.strerror(self.code))
        self.room -= len(data)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT], ids=["ENOSPC", "EDQUOT"])
def test_a_disk_that_fills_inside_torch_save(tmp_path, monkeypatch, code):
    """torch.save answers the OSError of its write with a RuntimeError: still the one StorageError line."""
    folder = tmp_path / "run"
    _run(folder, [1, 2])
    before = {p.name: p.read_bytes() for p in folder.glob("*.pt")}
    real = os.fdopen
    with monkeypatch.context() as m:
        m.setattr(os, "fdopen", lambda fd, *a, **k: FillingFile(real(fd, *a, **k), code, 300)
                  if re.search(r"/\.03\.pt\.\w+\.tmp$", os.readlink(f"/proc/self/fd/{fd}")) else real(fd, *a, **k))
        with pytest.raises(StorageError) as e:
            _run(folder)
    assert isinstance(e.value.__cause__, RuntimeError)  # what torch raised
    assert str(e.value) == expected_line(code, "writing", _path(folder, 3), "the partial file was removed")
    assert _leftovers(folder) == [] and {p.name: p.read_bytes() for p in folder.glob("*.pt")} == before
    stats, seen = _run(folder)
    assert seen == [3, 4, 5, 6] and _usable(folder) == set(KEYS)


@pytest.mark.parametrize("code", list(ERRNOS), ids=list(ERRNOS))
def test_a_run_folder_that_cannot_be_created(tmp_path, monkeypatch, code):
    code = ERRNOS[code]
    folder = tmp_path / "logs" / "digits" / "run"
    with monkeypatch.context() as m:
        inject(m, "mkdir", code, r"/logs(/|$)")
        with pytest.raises(StorageError) as e:
            RecordLoop(folder, partial(_path, folder))
    assert str(e.value) == expected_line(code, "creating the folder", folder, "nothing was written", folder=tmp_path)
    assert list(tmp_path.iterdir()) == []
    stats, seen = _run(folder)
    assert seen == KEYS and _leftovers(folder) == []


def test_a_storage_error_on_the_way_out_does_not_hide_the_first(tmp_path, monkeypatch):
    """A record write fails (full disk), then the claims cannot be removed (read-only): the first error is shown."""
    folder = tmp_path / "run"
    inject(monkeypatch, "replace", errno.ENOSPC, r"/03\.pt$")
    inject(monkeypatch, "unlink", errno.EROFS, r"\.claim$", after=2)  # claims of 1, 2 go; then none can
    with pytest.raises(StorageError) as e:
        _run(folder)
    assert str(e.value) == expected_line(errno.ENOSPC, "writing", _path(folder, 3), "the partial file was removed")


# ---------------------------------------------------------------- claims: written whole, free when left over


def test_an_empty_garbled_or_dead_claim_is_free_at_once(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFUSION_CLASSIFIER_CLAIM_TIMEOUT", "900")
    folder = tmp_path / "run"
    folder.mkdir()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    try:
        _claim(folder, 2).write_text("")  # left by a process killed between create and write (old versions, a crash)
        _claim(folder, 3).write_text('{"pid": 12')  # a torn write
        _claim(folder, 4).write_text(json.dumps({"pid": dead.pid, "host": host, "time": time.time()}))
        _claim(folder, 5).write_text(json.dumps({"pid": live.pid, "host": host, "time": time.time()}))
        stats, seen = _run(folder)
        assert seen == [1, 2, 3, 4, 6] and stats.elsewhere == 1  # only the live process's claim holds
        assert _leftovers(folder) == [_claim(folder, 5).name]
    finally:
        live.kill()
        live.wait()


def test_a_claim_appears_whole(tmp_path, monkeypatch):
    """The claim's content is written first and linked into place: it never exists empty."""
    record = tmp_path / "07.pt"
    real_link = os.link
    seen = []

    def link(src, dst, **kw):
        seen.append((Path(dst).exists(), json.loads(Path(src).read_text())))  # complete before the name exists
        return real_link(src, dst, **kw)

    monkeypatch.setattr(os, "link", link)
    a, b = Claims(timeout=60), Claims(timeout=60)
    assert a.acquire(record) and not b.acquire(record)
    (existed, content), (existed_for_b, _) = seen
    assert not existed and existed_for_b  # a made the claim; b's link found it and failed
    assert content["pid"] == os.getpid() and json.loads(Path(f"{record}.claim").read_text()) == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["07.pt.claim"]  # b's temporary file went
    a.release_all()
    assert list(tmp_path.iterdir()) == []


def test_without_hard_links_a_claim_is_created_in_place(tmp_path, monkeypatch):
    inject(monkeypatch, "link", errno.EPERM, r"\.claim$")  # e.g. vfat, some network file systems
    record = tmp_path / "07.pt"
    a, b = Claims(timeout=60), Claims(timeout=60)
    assert a.acquire(record) and not b.acquire(record)
    assert json.loads(Path(f"{record}.claim").read_text())["pid"] == os.getpid()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["07.pt.claim"]
    a.release_all()


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS], ids=["ENOSPC", "EROFS"])
def test_without_hard_links_a_half_written_claim_is_removed(tmp_path, monkeypatch, code):
    inject(monkeypatch, "link", errno.EPERM, r"\.claim$")
    inject(monkeypatch, "write", code, r"/07\.pt\.claim$", half=True)
    record = tmp_path / "07.pt"
    with pytest.raises(StorageError) as e:
        Claims(timeout=60).acquire(record)
    assert str(e.value) == expected_line(code, "writing the claim", Path(f"{record}.claim"), "no claim was left behind")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_refresh_is_reported_at_the_next_claim(tmp_path, monkeypatch):
    inject(monkeypatch, "utime", errno.EROFS, r"/01\.pt\.claim$")
    claims = Claims(timeout=0.4)  # refreshed every 0.5 s
    assert claims.acquire(tmp_path / "01.pt")
    deadline = time.time() + 10
    while claims.failure is None:
        assert time.time() < deadline, "the refresh never ran"
        time.sleep(0.05)
    with pytest.raises(StorageError) as e:
        claims.acquire(tmp_path / "02.pt")
    assert str(e.value) == expected_line(errno.EROFS, "refreshing the claim", tmp_path / "01.pt.claim",
                                         "this run's claims are dropped on the way out")
    claims.release_all(quiet=True)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- the command-line boundary


def test_an_unwrapped_storage_oserror_is_one_line_and_other_oserrors_keep_their_traceback(capsys, monkeypatch):
    from diffusion_classifier.cli import run as run_cli

    monkeypatch.delenv("DIFFUSION_CLASSIFIER_DEBUG", raising=False)

    def full(argv):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/runs/out.json")

    with pytest.raises(SystemExit) as e:
        run_cli(full, [])
    assert e.value.code == 2
    assert capsys.readouterr().err == (
        "error: no space left on the device while writing /runs/out.json (No space left on device); /runs/out.json "
        "may be incomplete and every record already written is intact: free space (or pass another --log_dir) and "
        "re-run the same command to resume\n")

    def broken(argv):
        raise OSError(errno.EIO, os.strerror(errno.EIO), "/runs/out.json")

    with pytest.raises(OSError, match="Input/output error"):  # a bug or a failing disk: the traceback stays
        run_cli(broken, [])


def _cli(capsys, argv: list[str]) -> tuple[int, str, str]:
    """eval_prob_adaptive.py through the command-line boundary, in this process: (status, stdout, stderr)."""
    import eval_prob_adaptive
    from diffusion_classifier.cli import run as run_cli

    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run_cli(eval_prob_adaptive.main, argv)
    out, err = capsys.readouterr()
    return e.value.code, out, err


def _one_error_line(status: int, err: str) -> str:
    assert status == 2 and "Traceback" not in err, err[-2000:]
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, err[-2000:]
    return errors[0]


def test_entry_point_full_disk_then_read_only_then_resume(tmp_path, capsys, monkeypatch):
    """eval_prob_adaptive.py: a full disk at the manifest and at a record, a read-only run folder, then the resume."""
    monkeypatch.delenv("DIFFUSION_CLASSIFIER_DEBUG", raising=False)
    np.save(tmp_path / "subset.npy", np.arange(6))
    logs = tmp_path / "logs"
    argv = list(map(str, ["--version", "tiny", "--dataset", "digits", "--split", "test", "--to_keep", "1",
                          "--n_samples", "4", "--subset_path", tmp_path / "subset.npy", "--log_dir", logs,
                          "--no_progress"]))

    # a full disk at the first write of the run: its manifest
    with monkeypatch.context() as m:
        hits = inject(m, "fsync", errno.ENOSPC, r"/\.manifest\.json\.\w+\.tmp$")
        status, _, err = _cli(capsys, argv)
    folder = Path(hits[0]).parent
    assert folder.parent == logs / "digits"
    assert _one_error_line(status, err) == "error: " + expected_line(
        errno.ENOSPC, "writing", folder / MANIFEST, "the partial file was removed")
    assert list(folder.iterdir()) == []

    # a full disk (quota) at the 4th record: 3 are kept
    with monkeypatch.context() as m:
        inject(m, "replace", errno.EDQUOT, r"/\d+\.pt$", after=3)
        status, _, err = _cli(capsys, argv)
    line = _one_error_line(status, err)
    done = {p.name: p.read_bytes() for p in folder.glob("*.pt")}
    assert len(done) == 3 and _leftovers(folder) == []
    failed = re.search(r"while writing (\S+) ", line).group(1)
    assert line == "error: " + expected_line(errno.EDQUOT, "writing", Path(failed), "the partial file was removed")
    for name in done:
        assert set(load_record(folder / name)) == {"errors", "pred", "label"}

    # the run folder became read-only: the first claim fails
    with monkeypatch.context() as m:
        inject(m, "open", errno.EROFS, "^" + re.escape(str(folder)) + "/")
        status, _, err = _cli(capsys, argv)
    first_missing = min(i for i in range(6) if record_path(folder, i, N_DIGITS_TEST).name not in done)
    claim = Path(f"{record_path(folder, first_missing, N_DIGITS_TEST)}{CLAIM_SUFFIX}")
    assert _one_error_line(status, err) == "error: " + expected_line(
        errno.EROFS, "writing the claim", claim, "no claim was left behind")
    assert {p.name: p.read_bytes() for p in folder.glob("*.pt")} == done and _leftovers(folder) == []

    # writable again: the same command finishes the 3 others at once
    status, out, err = _cli(capsys, argv)
    assert status == 0, err[-2000:]
    assert re.search(r"\(3 classified now, 3 already done, ", out.splitlines()[-1]), out
    assert len(list(folder.glob("*.pt"))) == 6 and _leftovers(folder) == []
    assert {k: (folder / k).read_bytes() for k in done} == done


# ---------------------------------------------------------------- a real full disk (a tiny tmpfs in a user namespace)

TMPFS_RUN = r"""
import json, subprocess, sys, torch
from functools import partial
from pathlib import Path
from diffusion_classifier.errors import StorageError
from diffusion_classifier.loop import RecordLoop
from diffusion_classifier.records import record_path

folder = Path(sys.argv[1]) / "run"
def run():
    with RecordLoop(folder, lambda k: record_path(folder, k, 100), ("x",), show_progress=False) as loop:
        for group in loop.groups(range(12), lambda keys: ([(k, k) for k in keys], []), 1):
            for k, _ in group:
                loop.save(k, {"x": torch.full((16384,), float(k))})  # 64 KiB
    return loop.stats.done
result = {}
try:
    run()
except StorageError as e:
    result["message"] = str(e)
result["left"] = sorted(p.name for p in folder.iterdir())
result["intact"] = all(torch.load(p)["x"][0].item() == int(p.stem) for p in folder.glob("*.pt"))
subprocess.run(["mount", "-o", "remount,size=2m", sys.argv[1]], check=True)  # space freed
result["resumed"] = run()
result["after"] = sorted(p.name for p in folder.iterdir())
print(json.dumps(result))
"""


def test_a_real_full_disk_on_a_tiny_tmpfs(tmp_path):
    """Optional: needs user namespaces (unshare -rm); skipped where they are not allowed."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode:
        pytest.skip("no user namespaces here (unshare -rm)")
    mount = tmp_path / "disk"
    mount.mkdir()
    script = 'mount -t tmpfs -o size=256k tmpfs "$1" || exit 77; exec "$2" -c "$3" "$1"'
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", script, "sh", str(mount), sys.executable, TMPFS_RUN],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    if proc.returncode == 77:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.splitlines()[-1])
    folder = mount / "run"
    assert re.fullmatch(rf"no space left on the device while (writing|writing the claim) {re.escape(str(folder))}/"
                        r"\d\d\.pt(\.claim)? \(No space left on device\); (the partial file was removed|no file was "
                        r"left behind|no claim was left behind) and every record already written is intact: free "
                        r"space \(or pass another --log_dir\) and re-run the same command to resume",
                        result["message"]), result["message"]
    written = [n for n in result["left"] if n.endswith(".pt")]
    assert 0 < len(written) < 12 and result["left"] == written and result["intact"]  # no claim, no temporary file
    assert result["resumed"] == 12 - len(written)
    assert result["after"] == [f"{k:02d}.pt" for k in range(12)]
