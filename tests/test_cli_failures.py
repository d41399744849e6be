"""The entry points as a user meets them: one-line errors, clean interrupts, healing resume, shared folders.

Every case runs the real script as a subprocess (on the shipped tiny models) and checks its exit status,
the last line of stderr and that no traceback is printed. Subprocess start-up (importing torch) costs a
few seconds, so the independent error cases run a few at a time in a pool.
"""
from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import load_script
from diffusion_classifier.schedules.staged import n_evaluations
from diffusion_classifier.records import load_record, record_path

ROOT = Path(__file__).resolve().parents[1]
N_DIGITS_TEST = 359  # images in the digits test split
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
       "DIFFUSION_CLASSIFIER_DEBUG": ""}


def command(script: str, *args) -> list[str]:
    return [sys.executable, str(ROOT / script), *map(str, args)]


def run(script: str, *args, env=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(command(script, *args), capture_output=True, text=True, env=env or ENV, timeout=timeout)


def last_line(text: str) -> str:
    lines = [line for line in text.replace("\r", "\n").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def assert_user_error(proc: subprocess.CompletedProcess, pattern: str) -> str:
    line = last_line(proc.stderr)
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert line.startswith("error: ") and re.search(pattern, line), line
    return line


def sd_args(tmp: Path, *extra, subset="subset.npy", log="logs") -> list:
    return ["--version", "tiny", "--dataset", "digits", "--split", "test", "--subset_path", tmp / subset,
            "--log_dir", tmp / log, "--to_keep", "1", "--n_samples", "2", "--no_progress", *extra]


# ---------------------------------------------------------------- one-line user errors


def _inputs(tmp: Path) -> None:
    np.save(tmp / "subset.npy", np.arange(3))
    np.save(tmp / "past_end.npy", np.array([0, N_DIGITS_TEST]))
    (tmp / "no_column.csv").write_text("prompt,classname\nzero,zero\n")
    (tmp / "latin1.csv").write_bytes("prompt,classname,classidx\nz\xe9ro,zero,0\n".encode("latin-1"))
    (tmp / "text_noise.pt").write_text("hello")
    import pickle

    with open(tmp / "pickle_noise.pt", "wb") as f:
        pickle.dump({"a": 1}, f)
    torch.save({"noise": torch.zeros(2, 3, 8, 8)}, tmp / "dict_noise.pt")
    (tmp / "a_file").write_text("")
    (tmp / "empty_root").mkdir()
    run_dir = tmp / "manifest_logs" / "digits" / "vtiny_1trials_1keep_2samples_8"
    run_dir.mkdir(parents=True)
    (run_dir / "manifest.json").write_text(json.dumps({"settings": {"noise": "seed 7"}}))
    wino = tmp / "wino_bad_json"
    (wino / "images").mkdir(parents=True)
    good = {"id": 0, "caption_0": "a", "caption_1": "b", "tag": "Object", "secondary_tag": "", "num_main_preds": 1,
            "collapsed_tag": "Object", "image_0": "ex_0_img_0", "image_1": "ex_0_img_1"}
    from PIL import Image

    for k in (0, 1):
        Image.new("RGB", (8, 8)).save(wino / "images" / f"ex_0_img_{k}.png")
    (wino / "examples.jsonl").write_text(json.dumps(good) + "\n{not json\n")
    missing = tmp / "wino_missing_image"
    (missing / "images").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(missing / "images" / "ex_0_img_0.png")
    (missing / "examples.jsonl").write_text(json.dumps(good) + "\n")
    # a DiT class folder 3 that holds a record of class 5
    cls_dir = tmp / "dit_logs" / "digits" / "digits-dit_500int_1trials" / "3"
    cls_dir.mkdir(parents=True)
    torch.save({"kind": "l2", "data": torch.zeros(2, 1), "t": torch.tensor([250, 750]), "cls": 5, "label": 0},
               record_path(cls_dir, 0, N_DIGITS_TEST))


def _cases(tmp: Path) -> dict[str, tuple[list, str]]:
    a = lambda *extra, **kw: command("eval_prob_adaptive.py", *sd_args(tmp, *extra, **kw))  # noqa: E731
    dit = ["--model", "tiny", "--dataset", "digits", "--t_interval", "500", "--no_progress"]
    return {
        "prompts_missing_column": (a("--prompt_path", tmp / "no_column.csv"),
                                   r"no_column\.csv: missing column\(s\) classidx; expected prompt,classname,classidx, "
                                   r"found prompt, classname$"),
        "prompts_not_utf8": (a("--prompt_path", tmp / "latin1.csv"),
                             r"latin1\.csv is not UTF-8 text \(byte 0xe9 at offset 27\); expected a UTF-8 CSV"),
        "subset_past_end": (a(subset="past_end.npy"),
                            rf"past_end\.npy: indices must lie in 0\.\.{N_DIGITS_TEST - 1} for a dataset of "
                            rf"{N_DIGITS_TEST} images, found 0\.\.{N_DIGITS_TEST}$"),
        "device_unknown": (a("--device", "gpu0"), r"^error: --device must be a torch device such as 'cpu' or 'cuda', "
                                                  r"got 'gpu0'$"),
        "device_gpu_lacking": (a("--device", f"cuda:{torch.cuda.device_count()}"),
                               r"^error: --device 'cuda:\d+' (needs a CUDA GPU, and torch finds none|: torch finds)"),
        "worker_idx": (a("--n_workers", 2, "--worker_idx", 2),
                       r"^error: --worker_idx must be in 0\.\.1 for --n_workers 2, got 2$"),
        "missing_model": (command("eval_prob_adaptive.py", *sd_args(tmp, "--model", tmp / "nowhere")),
                          r"folder '.*nowhere' does not exist; expected a diffusers pipeline folder"),
        "dataset_not_on_disk": (command("eval_prob_adaptive.py", "--version", "tiny", "--dataset", "cifar10",
                                        "--dataset_root", tmp / "empty_root", "--log_dir", tmp / "logs",
                                        "--to_keep", "1", "--n_samples", "2", "--no_progress"),
                                r"cifar10 data not found at .*empty_root.*: pass --dataset_root DIR or set DATASET_ROOT"),
        "noise_not_torch": (a("--noise_path", tmp / "text_noise.pt"),
                            r"noise file .*text_noise\.pt cannot be loaded with torch\.load\(weights_only=True\): "
                            r"it is not a torch\.save file \(KeyError: 101\); expected a float tensor"),
        "noise_pickle": (a("--noise_path", tmp / "pickle_noise.pt"),
                         r"pickle_noise\.pt cannot be loaded with torch\.load\(weights_only=True\): it holds Python "
                         r"objects other than tensors"),
        "noise_not_tensor": (a("--noise_path", tmp / "dict_noise.pt"),
                             r"dict_noise\.pt must hold a float tensor \(N, C, H, W\), found a dict"),
        "log_dir_not_writable": (a(log="a_file/logs"),
                                 r"--log_dir .*a_file/logs is not a writable folder \(Not a directory"),
        "manifest_differs": (a(log="manifest_logs"),
                             r"holds a run made with other settings \(\d+ differ: .*noise: folder \"seed 7\", "
                             r"command \"seed 0\"; .*re-run with the folder's settings, or use another --log_dir"),
        "dit_cls_outside": (command("eval_prob_dit.py", "--model", "tiny", "--dataset", "imagenet", "--cls", 10,
                                    "--log_dir", tmp / "dit_logs", "--no_progress"),
                            r"^error: --cls must be in 0\.\.9 for this model \(10 classes\), got 10$"),
        "dit_given_text_model": (command("eval_prob_dit.py", "--model", ROOT / "diffusion_classifier/tiny_models/tiny-flow",
                                         "--dataset", "digits", "--cls", 0, "--log_dir", tmp / "dit_logs", "--no_progress"),
                                 r"tiny-flow' is a StableDiffusion3Pipeline \(model_index\.json\), not a class-conditional "
                                 r"DiTPipeline: score text-to-image models with eval_prob_adaptive\.py$"),
        "dit_foreign_class_record": (command("eval_prob_dit.py", *dit, "--cls", 3, "--log_dir", tmp / "dit_logs"),
                                     r"3 is the folder of class 3 but 000\.pt holds a record of class 5"),
        "winoground_bad_json": (command("run_winoground.py", "--version", "tiny", "--data_dir", tmp / "wino_bad_json",
                                        "--log_dir", tmp / "logs", "--no_progress"),
                                r"examples\.jsonl line 2: expected a JSON object, found invalid JSON"),
        "winoground_missing_image": (command("run_winoground.py", "--version", "tiny", "--data_dir",
                                             tmp / "wino_missing_image", "--log_dir", tmp / "logs", "--no_progress"),
                                     r"Winoground image 'ex_0_img_1' not found: expected file .*ex_0_img_1\.png"),
        "print_acc_missing_folder": (command("scripts/print_acc.py", tmp / "no_run"),
                                     r"^error: run folder .*no_run does not exist$"),
        "print_dit_acc_missing_folder": (command("scripts/print_dit_acc.py", tmp / "no_run"),
                                         r"^error: run folder .*no_run does not exist$"),
    }


# Cases run as subprocesses of the real scripts (one or more per entry point); the rest call the same
# boundary in-process (cli.run(main, argv), exactly what `python script.py argv` runs) to save start-up time.
SUBPROCESS_CASES = {"worker_idx", "noise_not_torch", "log_dir_not_writable", "dit_cls_outside",
                    "dit_foreign_class_record", "winoground_bad_json", "print_acc_missing_folder",
                    "print_dit_acc_missing_folder"}
CASES = ["prompts_missing_column", "prompts_not_utf8", "subset_past_end", "device_unknown", "device_gpu_lacking",
         "worker_idx", "missing_model",
         "dataset_not_on_disk", "noise_not_torch", "noise_pickle", "noise_not_tensor", "log_dir_not_writable",
         "manifest_differs", "dit_cls_outside", "dit_given_text_model", "dit_foreign_class_record", "winoground_bad_json",
         "winoground_missing_image", "print_acc_missing_folder", "print_dit_acc_missing_folder"]


@pytest.fixture(scope="module")
def error_runs(tmp_path_factory, request):
    """Start every subprocess case (3 at a time); each test waits for its own."""
    tmp = tmp_path_factory.mktemp("errors")
    _inputs(tmp)
    cases = _cases(tmp)
    selected = {item.callspec.params.get("case") for item in request.session.items if hasattr(item, "callspec")}
    pool = ThreadPoolExecutor(max_workers=3)
    futures = {name: pool.submit(subprocess.run, cmd, capture_output=True, text=True, env=ENV, timeout=300)
               for name, (cmd, _) in cases.items() if name in SUBPROCESS_CASES and name in selected}
    yield tmp, cases, futures
    pool.shutdown(wait=True)


def run_in_process(capsys, cmd: list[str]) -> subprocess.CompletedProcess:
    """cmd (as for a subprocess) through cli.run in this process: status, stdout, stderr."""
    from diffusion_classifier.cli import run as run_cli

    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run_cli(load_script(Path(cmd[1]).relative_to(ROOT).as_posix()).main, cmd[2:])
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(cmd, e.value.code, out, err)


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if c in SUBPROCESS_CASES else c for c in CASES])
def test_user_error_is_one_line_exit_2(error_runs, case, capsys, monkeypatch):
    tmp, cases, futures = error_runs
    cmd, pattern = cases[case]
    monkeypatch.delenv("DIFFUSION_CLASSIFIER_DEBUG", raising=False)
    proc = futures[case].result() if case in futures else run_in_process(capsys, cmd)
    assert_user_error(proc, pattern)
    if case == "noise_not_torch":  # checked before the model loads: nothing was written
        assert not (tmp / "logs").exists() or not any((tmp / "logs").rglob("*.pt"))
    if case == "dit_foreign_class_record":  # the misplaced record is left alone
        rec = load_record(record_path(tmp / "dit_logs/digits/digits-dit_500int_1trials/3", 0, N_DIGITS_TEST))
        assert rec["cls"] == 5


def test_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    from diffusion_classifier.cli import run as run_cli
    from diffusion_classifier.errors import InputError

    np.save(tmp_path / "subset.npy", np.arange(3))
    args = sd_args(tmp_path, "--n_workers", 2, "--worker_idx", 5)
    proc = run("eval_prob_adaptive.py", *args, "--debug")
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "InputError: --worker_idx" in proc.stderr
    monkeypatch.setenv("DIFFUSION_CLASSIFIER_DEBUG", "1")
    with pytest.raises(InputError, match="--worker_idx must be in 0..1"):  # the exception itself: its traceback
        run_cli(load_script("eval_prob_adaptive.py").main, list(map(str, args)))


def test_prompts_bom_blank_lines_and_duplicates(tmp_path, capsys):
    np.save(tmp_path / "subset.npy", np.arange(2))
    rows = [f"the number {d},{d},{d}" for d in range(10)]
    text = "prompt,classname,classidx\n\n" + "\n".join(rows[:5]) + "\n   \n,,\n" + "\n".join(rows[5:]) + "\n" + rows[3] + "\n"
    (tmp_path / "p.csv").write_bytes(b"\xef\xbb\xbf" + text.encode())
    proc = run_in_process(capsys, command("eval_prob_adaptive.py", *sd_args(tmp_path, "--prompt_path", tmp_path / "p.csv")))
    assert proc.returncode == 0, proc.stderr[-2000:]
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == [f"warning: {tmp_path / 'p.csv'}: 1 duplicate prompt row(s) (line 15 repeats line 6); each copy "
                        f"is scored as a separate candidate (extra evaluations, and copies can take several --to_keep "
                        f"places)"]
    assert re.search(r"\(2 classified now, 0 already done, 44 denoiser evaluations, 22 per image, 0 repaired\)$",
                     last_line(proc.stdout)), proc.stdout  # 11 rows (the duplicate too) x 2 timesteps


# ---------------------------------------------------------------- interrupts, a full disk, healing resume


def _records(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.glob("*.pt")}


def _interrupt(args: list, folder: Path, sig: int, after: int) -> tuple[subprocess.CompletedProcess, int]:
    """Start a run, send `sig` once `after` new records exist; (finished process, records it wrote)."""
    before = len(_records(folder)) if folder.is_dir() else 0
    proc = subprocess.Popen(command("eval_prob_adaptive.py", *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=ENV)
    deadline = time.time() + 240
    while (len(_records(folder)) if folder.is_dir() else 0) < before + after:
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline
        time.sleep(0.02)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), len(_records(folder)) - before


def _clean(folder: Path) -> None:
    leftovers = [p.name for p in folder.iterdir() if p.name.startswith(".") or p.name.endswith((".tmp", ".claim"))]
    assert leftovers == [], leftovers
    for p in folder.glob("*.pt"):
        assert set(load_record(p)) == {"errors", "pred", "label"}, p


@pytest.mark.slow  # launches a script as a separate process
def test_interrupts_full_disk_corrupt_records_then_resume(tmp_path, capsys, monkeypatch):
    n = 16
    np.save(tmp_path / "subset.npy", np.arange(n))
    # one image per call, so records reach the disk one by one and the signal lands mid-run
    args = sd_args(tmp_path, "--n_samples", 4, "--image_batch", 1)
    folder = tmp_path / "logs" / "digits" / "vtiny_1trials_1keep_4samples_8"
    message = r"^interrupted by {}: (\d+) images finished in this run are saved, none is half-written; " \
              r"re-run the same command to resume$"

    proc, written = _interrupt(args, folder, signal.SIGINT, after=2)
    m = re.match(message.format("SIGINT"), last_line(proc.stderr))
    assert proc.returncode == 130 and m and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert int(m.group(1)) == written >= 2 and written < n
    _clean(folder)
    first = _records(folder)

    # a disk that fills during a record's write: the temporary file goes, what was written stays
    def full(obj, f, *a, **k):
        f.write(b"partial record")
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(torch, "save", full)
        proc = run_in_process(capsys, command("eval_prob_adaptive.py", *args))
    assert_user_error(proc, r"no space left on the device while writing .*\.pt \(No space left on device\); the "
                            r"partial file was removed and every record already written is intact: free space \(or "
                            r"pass another --log_dir\) and re-run the same command to resume$")
    assert _records(folder) == first
    _clean(folder)

    proc, written2 = _interrupt(args, folder, signal.SIGTERM, after=2)
    m = re.match(message.format("SIGTERM"), last_line(proc.stderr))
    assert proc.returncode == 143 and m and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert int(m.group(1)) == written2 >= 2
    _clean(folder)
    second = _records(folder)
    assert {k: second[k] for k in first} == first  # nothing finished was rewritten

    # two broken records: a truncated copy and a file written by another tool
    names = sorted(second)
    truncated, foreign = folder / names[0], folder / names[1]
    truncated.write_bytes(truncated.read_bytes()[:100])
    torch.save({"something": torch.zeros(3)}, foreign)
    proc = run_in_process(capsys, command("scripts/print_acc.py", folder))
    assert proc.returncode == 0
    assert f"read {len(second) - 2} records, skipped 2 unreadable: {truncated.name}, {foreign.name}" in proc.stdout

    proc = run_in_process(capsys, command("eval_prob_adaptive.py", *args))  # the resume
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == [
        f"warning: {truncated}: unreadable with torch.load(weights_only=True): it is truncated or not a torch.save "
        f"file (its zip archive cannot be read); moved aside to {truncated.name}.corrupt, recomputing it",
        f"warning: {foreign}: missing key(s) errors, pred, label; moved aside to {foreign.name}.corrupt, recomputing it",
    ]
    done_before = len(second) - 2
    per_image = n_evaluations(10, [1], [4])
    assert last_line(proc.stdout).endswith(
        f"({n - done_before} classified now, {done_before} already done, {(n - done_before) * per_image} denoiser "
        f"evaluations, {per_image} per image, 2 repaired)"), proc.stdout
    assert sorted(p.name for p in folder.glob("*.corrupt")) == [truncated.name + ".corrupt", foreign.name + ".corrupt"]
    final = _records(folder)
    assert sorted(final) == [record_path(folder, i, N_DIGITS_TEST).name for i in range(n)]
    assert {k: final[k] for k in second if k not in (truncated.name, foreign.name)} == \
        {k: v for k, v in second.items() if k not in (truncated.name, foreign.name)}
    _clean(folder)
    proc = run_in_process(capsys, command("scripts/print_acc.py", folder))
    assert f"read {n} records, skipped 0 unreadable\n" in proc.stdout


# ---------------------------------------------------------------- three processes on one folder


@pytest.mark.slow  # launches a script as a separate process
def test_three_processes_share_one_folder(tmp_path):
    n = 12
    np.save(tmp_path / "subset.npy", np.arange(n))
    args = sd_args(tmp_path, "--n_samples", 5)
    procs = [subprocess.Popen(command("eval_prob_adaptive.py", *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=ENV) for _ in range(3)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [e[-2000:] for _, e in outs]
    folder = tmp_path / "logs" / "digits" / "vtiny_1trials_1keep_5samples_8"
    _clean(folder)
    assert sorted(p.name for p in folder.glob("*.pt")) == [record_path(folder, i, N_DIGITS_TEST).name for i in range(n)]
    assert not list(folder.glob("*.corrupt"))
    finals = [last_line(out) for out, _ in outs]
    done = [int(re.search(r"\((\d+) classified now", f).group(1)) for f in finals]
    evaluations = [int(re.search(r"(\d+) denoiser evaluations", f).group(1)) for f in finals]
    assert sum(done) == n, finals  # every image computed exactly once over the three processes
    assert sum(evaluations) == n * n_evaluations(10, [1], [5]), finals  # the denoiser work of one run
    print("images per process:", done)


# ---------------------------------------------------------------- claims, and healing in the DiT and Winoground loops


def test_claims_exclusive_and_stale_takeover(tmp_path):
    from diffusion_classifier.claims import Claims

    record = tmp_path / "007.pt"
    claim = tmp_path / "007.pt.claim"
    a, b = Claims(timeout=60), Claims(timeout=60)
    assert a.acquire(record) and not b.acquire(record)  # held by a live holder: refused
    info = json.loads(claim.read_text())
    assert info["pid"] == os.getpid() and info["host"] == a.host
    a.release(record)
    assert not claim.exists() and b.acquire(record)
    b.release_all()

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    cases = [  # (pid, host, age in seconds, taken over?)
        (dead.pid, a.host, 0, True),  # a dead process on this host
        (os.getppid(), a.host, 3600, False),  # a live process on this host, however old
        (12345, "another-host", 0, False),  # another host, refreshed recently
        (12345, "another-host", 3600, True),  # another host, not refreshed for longer than the timeout
    ]
    for pid, host, age, taken in cases:
        claim.write_text(json.dumps({"pid": pid, "host": host, "time": time.time() - age}))
        os.utime(claim, (time.time() - age, time.time() - age))
        assert a.acquire(record) is taken, (pid, host, age)
        if taken:
            assert json.loads(claim.read_text())["pid"] == os.getpid()
        a.release_all()
        claim.unlink(missing_ok=True)


def test_a_takeover_lock_left_by_a_killed_process_does_not_keep_a_stale_claim(tmp_path):
    """A process killed while taking over a claim leaves <claim>.takeover: once that lock is old, the next run takes
    the dead process's claim over at once (it left the record undone, as held by another process)."""
    from diffusion_classifier.claims import Claims

    record, claim = tmp_path / "007.pt", tmp_path / "007.pt.claim"
    lock = tmp_path / "007.pt.claim.takeover"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    claims = Claims(timeout=60)
    for age, taken in [(5, False), (300, True)]:  # a recent lock may be a live takeover; an old one is a leftover
        claim.write_text(json.dumps({"pid": dead.pid, "host": claims.host, "time": 0}))
        lock.touch()
        os.utime(lock, (time.time() - age, time.time() - age))
        assert claims.acquire(record) is taken, age
        assert lock.exists() is not taken
        claims.release_all()
        claim.unlink(missing_ok=True)


def test_dit_per_class_and_winoground_heal_broken_records(tmp_path, capsys):
    import eval_prob_dit
    import run_winoground

    np.save(tmp_path / "subset.npy", np.arange(3))
    args = ["--model", "tiny", "--dataset", "digits", "--t_interval", "500", "--cls", "2", "--subset_path",
            tmp_path / "subset.npy", "--log_dir", tmp_path / "logs", "--no_progress"]
    args = list(map(str, args))
    first = eval_prob_dit.main(args)
    folder = Path(first["class_folder"])
    broken = record_path(folder, 1, N_DIGITS_TEST)
    good = load_record(broken)
    broken.write_bytes(b"not a record")
    proc = run_in_process(capsys, command("scripts/print_dit_acc.py", first["folder"], "--dataset", "digits"))
    assert proc.returncode == 0 and f"skipped 1 unreadable record(s), their images left out: 2/{broken.name}" in proc.stdout
    second = eval_prob_dit.main(args)
    err = capsys.readouterr().err
    assert second["done"] == 1 and second["skipped"] == 2 and second["repaired"] == 1
    assert f"warning: {broken}: unreadable with torch.load(weights_only=True)" in err
    assert (folder / f"{broken.name}.corrupt").read_bytes() == b"not a record"
    torch.testing.assert_close(load_record(broken)["data"], good["data"])  # recomputed: the same numbers

    data = tmp_path / "wino"
    load_script("scripts/make_digits_winoground.py").main(["--out", str(data), "--n", "2"])
    wargs = ["--version", "tiny", "--data_dir", str(data), "--log_dir", str(tmp_path / "logs"), "--t_interval", "500",
             "--no_progress"]
    first = run_winoground.main(wargs)
    broken = Path(first["folder"]) / "1.pt"
    torch.save({"id": 1, "tag": "Object"}, broken)  # no scores
    second = run_winoground.main(wargs)
    assert second["computed"] == 1 and second["repaired"] == 1 and second["lines"] == first["lines"]
    assert f"warning: {broken}: expected a dict with keys id, tag and scores; moved aside to 1.pt.corrupt, " \
           f"recomputing it" in capsys.readouterr().err
    assert "scores" in load_record(broken) and (broken.parent / "1.pt.corrupt").is_file()


def test_a_warning_of_the_toolkit_is_one_line_on_the_command_line(capsys):
    """A library warning (a prompt truncated) reads as `warning: ...`, not Python's two lines with the source line."""
    import warnings

    from diffusion_classifier.cli import run

    def main(argv):
        warnings.warn("2 prompt(s) exceed the limit\nand were truncated", UserWarning)

    with pytest.raises(SystemExit) as stop:
        run(main, [])
    assert stop.value.code == 0
    assert capsys.readouterr().err == "warning: 2 prompt(s) exceed the limit and were truncated\n"
