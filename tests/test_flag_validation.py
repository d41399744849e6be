"""Every numeric flag of every entry script is range-checked before anything is written.

Each flag is fed NaN, inf, 0, a negative and a huge value: what its range refuses exits with status 2,
names the flag, the range and the value, prints no traceback and leaves the working directory (which
holds the run's empty --log_dir and every output path) as it was; what it accepts parses. The scripts
run in this process (cli.run(main, argv), what `python script.py argv` runs), so no model is loaded.
"""
from __future__ import annotations

import functools
import importlib.util
import re
from pathlib import Path

import pytest

from diffusion_classifier.cli import run as run_cli

ROOT = Path(__file__).resolve().parents[1]

HUGE = str(10**9)  # large but meaningful: a slow run, not a wrong one
INT64_OVER = str(2**63)  # overflows torch's int64
NEG_INF = "-inf"  # passed as --flag=-inf: argparse would read a bare -inf as an option

# kind -> (values refused by the flag's type, values it accepts); together they cover nan, inf, 0, < 0, huge
KINDS = {
    "count": (["nan", "inf", "0", "-1", "1.5", INT64_OVER], ["1", HUGE, str(2**63 - 1)]),
    "count0": (["nan", "inf", "-1", INT64_OVER], ["0", HUGE]),
    "seed": (["nan", "inf", "-1", str(2**64)], ["0", HUGE, str(2**64 - 1)]),
    "severity": (["nan", "inf", "0", "-1", "6", HUGE], ["1", "5"]),
    "threads": (["nan", "inf", "0", "-1", str(2**31)], ["1", str(2**31 - 1)]),
    "positive": (["nan", "inf", NEG_INF, "0", "-1"], ["1e-300", "1e300"]),
    "non_negative": (["nan", "inf", NEG_INF, "-1"], ["0", "1e300"]),
    "finite": (["nan", "inf", NEG_INF], ["0", "-1", "1e300"]),
    "probability": (["nan", "inf", "0", "-1", "1", "1e300"], ["1e-300", "0.5"]),
    "fraction": (["nan", "inf", "-1", "1", "1e300"], ["0", "0.5"]),
}
RANGES = {"count": "1..2^63-1", "count0": "0..2^63-1", "seed": "0..2^64-1", "severity": "1..5", "threads": "1..2^31-1",
          "positive": "(0, inf)", "non_negative": "[0, inf)", "finite": "(-inf, inf)", "probability": "(0, 1)",
          "fraction": "[0, 1)"}

# the arguments each script needs besides the flag under test; LOG: the empty --log_dir, OUT: a path not there
BASE = {
    "eval_prob_adaptive.py": ["--version", "tiny", "--dataset", "digits", "--split", "test", "--log_dir", "LOG",
                              "--to_keep", "1", "--n_samples", "2", "--no_progress"],
    "eval_prob_dit.py": ["--model", "tiny", "--dataset", "digits", "--log_dir", "LOG", "--to_keep", "1",
                         "--n_samples", "2", "--no_progress"],
    "run_winoground.py": ["--version", "tiny", "--data_dir", "OUT/wino", "--log_dir", "LOG", "--no_progress"],
    "run_compositional.py": ["--version", "tiny", "--data_path", "OUT/items.jsonl", "--log_dir", "LOG", "--no_progress"],
    "scripts/save_noise.py": ["--out", "OUT/noise.pt"],
    "scripts/fit_timestep_weights.py": ["OUT/run", "--out", "OUT/weights.json"],
    "scripts/make_digits_winoground.py": ["--out", "OUT/wino"],
    "scripts/print_acc.py": ["OUT/run", "--probs"],
    "scripts/train_tiny_models.py": ["--out", "OUT/models", "--checkpoint-dir", "OUT/ck"],
    "scripts/make_subset.py": ["--dataset", "digits", "--per_class", "2", "--out", "OUT/subset.npy"],
}
SHARED = [("--seed", "seed"), ("--n_trials", "count"), ("--n_workers", "count"), ("--worker_idx", "count0"),
          ("--severity", "severity"), ("--image_batch", "count"), ("--batch_size", "count"),
          ("--to_keep", "count"), ("--n_samples", "count"), ("--z", "positive"), ("--min_samples", "count"),
          ("--delta", "probability"), ("--epsilon", "fraction")]
FLAGS = {  # script -> [(flag, kind, extra arguments)]
    "eval_prob_adaptive.py": [(f, k, []) for f, k in SHARED] + [
        ("--img_size", "count", []), ("--guidance", "finite", [])],
    "eval_prob_dit.py": [(f, k, []) for f, k in SHARED] + [
        ("--cls", "count0", []), ("--t_interval", "count", []), ("--image_size", "count", []),
        ("--imgs_to_eval", "count", [])],
    "run_winoground.py": [("--t_interval", "count", []), ("--batch_size", "count", []), ("--n_trials", "count", []),
                          ("--seed", "seed", []), ("--limit", "count", []), ("--img_size", "count", [])],
    "run_compositional.py": [("--to_keep", "count", []), ("--n_samples", "count", []), ("--batch_size", "count", []),
                             ("--n_trials", "count", []), ("--seed", "seed", []), ("--limit", "count", []),
                             ("--img_size", "count", []), ("--z", "positive", []), ("--delta", "probability", []),
                             ("--worker_idx", "count0", [])],
    "scripts/save_noise.py": [("--img_size", "count", ["--downsample", "1"]), ("--channels", "count", []),
                              ("--downsample", "count", ["--img_size", "1"]), ("--n", "count", []),
                              ("--seed", "seed", [])],
    "scripts/fit_timestep_weights.py": [("--holdout", "probability", []), ("--seed", "seed", []),
                                        ("--n_bins", "count", []), ("--degree", "count", []),
                                        ("--l2", "non_negative", []), ("--T", "count", [])],
    "scripts/make_digits_winoground.py": [("--n", "count", []), ("--seed", "seed", [])],
    "scripts/print_acc.py": [("--top", "count", []), ("--temperature", "positive", [])],
    "scripts/make_subset.py": [("--per_class", "count", []), ("--seed", "seed", []), ("--severity", "severity", [])],
    "scripts/train_tiny_models.py": [
        ("--steps", "count", []), ("--batch", "count", []), ("--lr", "positive", []), ("--shift", "positive", ["--model", "flow"]),
        ("--channels", "count", []), ("--patch", "count", []), ("--heads", "count", []), ("--head-dim", "count", []),
        ("--layers", "count", []), ("--seed", "seed", []), ("--threads", "threads", []),
        ("--checkpoint-every", "non_negative", []), ("--time-limit", "non_negative", []),
        ("--stop-at", "count", []), ("--val-fraction", "fraction", ["--model", "dit"]),
        ("--holdout", "count0", [])],
}
LIST_FLAGS = {("eval_prob_adaptive.py", "--to_keep"), ("eval_prob_adaptive.py", "--n_samples"),
              ("eval_prob_dit.py", "--to_keep"), ("eval_prob_dit.py", "--n_samples"),
              ("run_compositional.py", "--to_keep"), ("run_compositional.py", "--n_samples"),
              ("scripts/train_tiny_models.py", "--channels")}  # nargs="+": each element is checked
ROWS = [(script, flag, kind, extra) for script, rows in FLAGS.items() for flag, kind, extra in rows]


@functools.cache
def module(script: str):
    """The entry point script (a path from the repository root) imported as a module: the scripts are not a package."""
    spec = importlib.util.spec_from_file_location(Path(script).stem, ROOT / script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def argv_for(script: str, tmp: Path, *args) -> list[str]:
    words = [*BASE[script], *args]
    return [str(tmp / "logs") if w == "LOG" else w.replace("OUT", str(tmp)) if w.startswith("OUT") else w for w in words]


def flag_args(script: str, flag: str, value: str) -> list[str]:
    """`--flag=value` (so that -inf is a value); a list flag gets the value as its second element."""
    return [flag, "1", value] if (script, flag) in LIST_FLAGS else [f"{flag}={value}"]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """An empty working directory holding only the empty --log_dir; defaults that write to the cwd land here."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DIFFUSION_CLASSIFIER_DEBUG", raising=False)
    (tmp_path / "logs").mkdir()
    return tmp_path


def run_refused(script: str, argv: list[str], capsys) -> str:
    """cli.run(main, argv): assert exit 2 without a traceback, one line on stderr (no usage block); that line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run_cli(module(script).main, argv)
    err = capsys.readouterr().err
    assert e.value.code == 2, err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    assert len(err.strip().splitlines()) == 1, err[-2000:]
    return err.strip()


def assert_nothing_written(tmp: Path) -> None:
    assert sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*")) == ["logs"]


@pytest.mark.parametrize("script,flag,kind,extra", ROWS, ids=[f"{s.split('/')[-1]}{f}" for s, f, _, _ in ROWS])
def test_out_of_range_values_are_refused_before_anything_is_written(workdir, capsys, script, flag, kind, extra):
    for value in KINDS[kind][0]:
        line = run_refused(script, argv_for(script, workdir, *extra, *flag_args(script, flag, value)), capsys)
        # e.g. "eval_prob_adaptive.py: error: argument --delta: expected a finite number in (0, 1), got 'nan'"
        assert re.search(rf"error: argument ([-\w]+/)?{re.escape(flag)}(/[-\w]+)?: expected an? .*{re.escape(RANGES[kind])}, "
                         rf"got '{re.escape(value)}'$", line), (value, line)
        assert_nothing_written(workdir)


@pytest.mark.parametrize("script,flag,kind,extra", ROWS, ids=[f"{s.split('/')[-1]}{f}" for s, f, _, _ in ROWS])
def test_values_in_range_parse(workdir, script, flag, kind, extra):
    for value in KINDS[kind][1]:
        args = module(script).parse_args(argv_for(script, workdir, *extra, *flag_args(script, flag, value)))
        got = getattr(args, flag.lstrip("-").replace("-", "_"))
        got = got[-1] if (script, flag) in LIST_FLAGS else got
        assert got == (float(value) if isinstance(got, float) else int(value))
    assert_nothing_written(workdir)


# in range for its type, refused by what it is checked against (other flags, the schedule), still before any write
CROSS = [
    ("eval_prob_adaptive.py", ["--worker_idx", HUGE], r"--worker_idx must be in 0\.\.0 for --n_workers 1, got 1000000000$"),
    ("eval_prob_adaptive.py", ["--n_samples", HUGE], r"--n_samples must be at most the 1000 training timesteps"),
    ("eval_prob_adaptive.py", ["--to_keep", HUGE], r"the last --to_keep must be 1"),
    ("eval_prob_adaptive.py", ["--schedule", "statistical", "--min_samples", HUGE],
     r"--min_samples must be in 1\.\.max\(--n_samples\) = 2 for --schedule statistical, got 1000000000$"),
    ("eval_prob_dit.py", ["--worker_idx", "1", "--n_workers", "1"], r"--worker_idx must be in 0\.\.0"),
    ("eval_prob_dit.py", ["--n_samples", HUGE], r"--n_samples must be at most the 1000 training timesteps"),
    ("eval_prob_dit.py", ["--schedule", "statistical", "--min_samples", "3"],
     r"--min_samples must be in 1\.\.max\(--n_samples\) = 2 for --schedule statistical, got 3$"),
    ("scripts/save_noise.py", ["--img_size", "100"], r"--img_size must be divisible by 8 \(--downsample\), got 100$"),
    ("scripts/train_tiny_models.py", ["--val-fraction", "0.5"], r"--val-fraction is implemented for --model dit"),
    ("scripts/save_noise.py", ["--n", str(2**63 - 1)], r"a bank of --n 9223372036854775807 x \(4, 64, 64\) floats needs "
                                                        r".* GiB, more than this machine's .* GiB of memory"),
    # a setting of other kinds than the one trained is refused, not ignored
    ("scripts/train_tiny_models.py", ["--model", "dit", "--channels", "8", "16"],
     r"--channels is a setting of --model sd or sd-v or sd-flow \(--data digits\); got --model dit$"),
    ("scripts/train_tiny_models.py", ["--shift", "3"], r"--shift is a setting of --model flow \(--data digits\); got --model both$"),
    ("scripts/train_tiny_models.py", ["--model", "sd", "--patch", "2"], r"--patch is a setting of --model dit or flow"),
    ("scripts/train_tiny_models.py", ["--model", "flow", "--beta-schedule", "linear"],
     r"--beta-schedule is a setting of --model sd or sd-v or dit"),
    ("scripts/train_tiny_models.py", ["--model", "sd-flow", "--beta-schedule", "linear"],  # flow matching has no β
     r"--beta-schedule is a setting of --model sd or sd-v or dit \(--data digits\); got --model sd-flow$"),
]


@pytest.mark.parametrize("script,args,pattern", CROSS, ids=[f"{s.split('/')[-1]}{a[-2]}" for s, a, _ in CROSS])
def test_values_refused_by_other_flags_fail_before_anything_is_written(workdir, capsys, script, args, pattern):
    line = run_refused(script, argv_for(script, workdir, *args), capsys)
    assert re.search(pattern, line), line
    assert_nothing_written(workdir)


# ---------------------------------------------------------------- output paths


def test_output_paths_of_the_wrong_kind_are_one_line_errors(workdir, capsys):
    (workdir / "a_file").write_text("keep")
    (workdir / "a_folder").mkdir()
    f, d = str(workdir / "a_file"), str(workdir / "a_folder")
    cases = [
        ("scripts/save_noise.py", ["--out", d], r"--out .*a_folder is a folder; expected the path of a file"),
        ("scripts/fit_timestep_weights.py", [str(workdir / "run"), "--out", d], r"--out .*a_folder is a folder"),
        ("scripts/write_prompts.py", ["--dataset", "digits", "--out", d], r"--out .*a_folder is a folder"),
        ("scripts/write_prompts.py", ["--dataset", "digits", "--out", f"{f}/p.csv"], r"--out .*a_file is not a folder"),
        ("scripts/write_prompts.py", ["--out_dir", f], r"--out_dir .*a_file is not a writable folder \(File exists"),
        ("scripts/make_digits_winoground.py", ["--out", f], r"--out .*a_file is not a writable folder \(File exists"),
        ("scripts/train_tiny_models.py", ["--out", f, "--checkpoint-dir", d],
         r"--out .*a_file is not a writable folder \(File exists"),
        ("scripts/train_tiny_models.py", ["--out", f"{f}/models", "--checkpoint-dir", d],
         r"--out .*a_file/models is not a writable folder \(Not a directory"),
        ("scripts/train_tiny_models.py", ["--out", d, "--checkpoint-dir", f],
         r"--checkpoint-dir .*a_file is not a writable folder \(File exists"),
        ("scripts/print_acc.py", [f], r"a_file is a file; expected a run folder"),
        ("eval_prob_adaptive.py", ["--extra", "../../escape", "--to_keep", "1", "--n_samples", "2"],
         r"--extra: expected a suffix of the run's folder name \(no '/' or '.'\), got '\.\./\.\./escape'"),
        ("run_winoground.py", ["--extra", "a/b"], r"--extra: expected a suffix of the run's folder name"),
    ]
    for script, argv, pattern in cases:
        line = run_refused(script, argv, capsys)
        assert line.startswith("error: ") and re.search(pattern, line), (script, argv, line)
        assert (workdir / "a_file").read_text() == "keep" and not any((workdir / "a_folder").iterdir())
    assert sorted(p.name for p in workdir.iterdir()) == ["a_file", "a_folder", "logs"]


# ---------------------------------------------------------------- help texts

SCRIPTS = [*BASE, "scripts/write_prompts.py", "scripts/print_dit_acc.py"]
# defaults that a help text may name in words: the reference's, and the --error_space default that --loss compares in
NAMED_DEFAULTS = ("the reference's default", "by default)")


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_states_each_default_once(script, capsys, monkeypatch):
    """No help text writes a default of its own beside ArgumentDefaultsHelpFormatter's "(default: ...)"."""
    monkeypatch.setenv("COLUMNS", "10000")  # one line per flag
    with pytest.raises(SystemExit) as e:
        module(script).main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    flags = [line for line in out.splitlines() if line.lstrip().startswith("-")]
    assert len(flags) > 2
    for line in flags:
        written = line.rpartition(" (default: ")[0] or line  # the text without the formatter's note
        for named in NAMED_DEFAULTS:
            written = written.replace(named, "")
        assert "default" not in written, line
    assert "(default 3.5)" not in out


def test_statistical_flags_without_the_statistical_schedule_are_named_as_ignored(capsys):
    from argparse import Namespace

    from diffusion_classifier.cli import Z_DEFAULT, check_statistical_args

    flags = dict(z=Z_DEFAULT, min_samples=None, delta=None, variance=None, spending=None, epsilon=None, n_samples=[50])
    check_statistical_args(Namespace(schedule="reference", **flags))
    assert capsys.readouterr().err == ""
    check_statistical_args(Namespace(schedule="reference", **{**flags, "z": 2.0, "delta": 0.05}))
    assert capsys.readouterr().err.startswith("warning: --z, --delta set(s) the statistical schedule, which this run "
                                              "does not use (--schedule reference): ignored")
    check_statistical_args(Namespace(schedule="statistical", **{**flags, "delta": 0.05}))
    assert capsys.readouterr().err == ""
