"""The command-line boundary shared by every entry point: one-line user errors, clean interrupts.

    if __name__ == "__main__":
        run(main)

- a UserError (errors.py) prints `error: <message>` as one line on stderr and exits with status 2, and so
  does an OSError of a full disk or a folder that cannot be written (records.storage_error);
- SIGINT / SIGTERM stop after the record being written is complete, say how many records this run
  finished and that re-running the same command resumes, and exit with 130 / 143;
- any other exception is a bug and keeps its traceback;
- argparse refuses a flag's value (exit status 2) before anything runs: the `type=` functions below check
  every numeric flag's range, so no folder is created or claimed for a command that cannot run;
- `--debug` (taken off the command line before the script parses it) or DIFFUSION_CLASSIFIER_DEBUG=1
  shows the traceback of user errors and interrupts too;
- the progress bars and warnings that diffusers, transformers, datasets and huggingface_hub print while
  loading are silenced, so the run's own last line is its result; `--verbose` (taken off like `--debug`)
  or `--debug` keeps them.
"""
from __future__ import annotations

import argparse
import inspect
import math
import os
import sys
import warnings
from pathlib import Path
from typing import Callable

from . import interrupts
from .errors import InputError, UserError, warn

DEBUG_ENV = "DIFFUSION_CLASSIFIER_DEBUG"
USER_ERROR_EXIT = 2


def debug_requested(argv: list[str]) -> bool:
    return "--debug" in argv or os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes", "on")


# settings the libraries read when imported (loading happens lazily, after run() has set them);
# a value the user set in the environment wins
QUIET_ENV = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # also transformers' "Loading weights" bar
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "DIFFUSERS_VERBOSITY": "error",
    "HF_HUB_VERBOSITY": "error",  # its retries of an unreachable hub log a line each
    "DATASETS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
}
QUIET_MODULES = r"(diffusers|transformers|datasets|huggingface_hub|accelerate|open_clip|timm)(\.|$)"


def quiet_libraries() -> None:
    """Silence the loading progress bars, log messages and Python warnings of the third-party libraries."""
    import warnings

    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    warnings.filterwarnings("ignore", module=QUIET_MODULES)
    # libraries imported before run() (a script's own imports) read the environment already: tell them directly
    if "huggingface_hub" in sys.modules:
        sys.modules["huggingface_hub"].utils.disable_progress_bars()
        sys.modules["huggingface_hub"].utils.logging.set_verbosity_error()
    for name in ("transformers", "diffusers"):
        if name in sys.modules:
            logging = sys.modules[name].utils.logging
            logging.set_verbosity_error()
            logging.disable_progress_bar()
    if "datasets" in sys.modules:
        sys.modules["datasets"].disable_progress_bars()
        sys.modules["datasets"].logging.set_verbosity_error()


def one_line(message: str) -> str:
    """The message with its lines joined: a user error is one line on stderr."""
    return " ".join(part.strip() for part in str(message).splitlines() if part.strip())


# ---------------------------------------------------------------- flag values

INT64_MAX = 2**63 - 1  # counts and sizes beyond it overflow torch's int64
SEED_MAX = 2**64 - 1  # the largest seed torch.Generator.manual_seed takes
_BOUND_NAMES = {INT64_MAX: "2^63-1", SEED_MAX: "2^64-1", 2**31 - 1: "2^31-1"}


def _shown(text: str) -> str:
    return repr(text if len(text) <= 40 else f"{text[:20]}...{text[-10:]}")


def int_in(lo: int, hi: int = INT64_MAX) -> Callable[[str], int]:
    """An argparse `type=`: an integer in lo..hi; anything else is refused with the range and the value found."""
    span = f"{lo}..{_BOUND_NAMES.get(hi, hi)}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"expected an integer in {span}, got {_shown(text)}")
        return value

    parse.__name__ = f"integer in {span}"
    return parse


def float_in(lo: float = -math.inf, hi: float = math.inf, lo_open: bool = False,
             hi_open: bool = False) -> Callable[[str], float]:
    """An argparse `type=`: a finite number in the interval; NaN, +-inf and numbers outside it are refused."""
    lo_open, hi_open = lo_open or lo == -math.inf, hi_open or hi == math.inf
    span = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        above = lo < value if lo_open else lo <= value
        below = value < hi if hi_open else value <= hi
        if not (math.isfinite(value) and above and below):  # NaN compares false: refused here, never stored
            raise argparse.ArgumentTypeError(f"expected a finite number in {span}, got {_shown(text)}")
        return value

    parse.__name__ = f"number in {span}"
    return parse


def folder_suffix(text: str) -> str:
    """An argparse `type=` for --extra: a suffix of one folder name (no path separator, not . or .., no NUL)."""
    if not text or any(c in text for c in "/\\\0") or text in (".", ".."):
        raise argparse.ArgumentTypeError(f"expected a suffix of the run's folder name (no '/' or '\\'), got {_shown(text)}")
    return text


folder_suffix.__name__ = "folder name suffix"
positive_int = int_in(1)  # counts and sizes: batch sizes, trials, images, steps
non_negative_int = int_in(0)  # indices and optional counts (0: none)
seed_int = int_in(0, SEED_MAX)
finite_float = float_in()
positive_float = float_in(0, lo_open=True)
non_negative_float = float_in(0)
probability = float_in(0, 1, lo_open=True, hi_open=True)  # (0, 1): an error rate such as --delta
fraction = float_in(0, 1, hi_open=True)  # [0, 1)


class ImageSize(argparse.Action):
    """`--img_size S` or `--img_size H W` (nargs="+", type=positive_int): stored as S, or (H, W) when H != W."""

    def __call__(self, parser, namespace, values, option_string=None):
        from .data.sizes import image_size

        if len(values) > 2:
            raise argparse.ArgumentError(self, f"expected S or H W, got {len(values)} values")
        setattr(namespace, self.dest, image_size(values[0] if len(values) == 1 else values))


WEIGHTS_DEFAULT = ("the weights shipped in a local model folder (timestep_weights.json) where they were fitted for "
                   "--loss, else plain means; none: plain means")
RESIZE_HELP = "S: resize the short side to S, centre-crop S x S; H W: resize to H x W, no crop"


def add_img_size_arg(parser, help: str, *names: str, default=None, **kwargs) -> None:
    """The image-size flag (`--img_size` unless `names` are given): S or H W, positive integers."""
    parser.add_argument(*(names or ("--img_size",)), nargs="+", type=positive_int, action=ImageSize,
                        metavar=("S|H", "W"), default=default, help=help, **kwargs)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Flag defaults in the help, the description as written."""


def add_run_args(parser) -> None:
    """Where a run goes and what it runs on: flags every entry script shares, each with its one default."""
    from .loading import DTYPES

    parser.add_argument("--log_dir", type=Path, default=Path(os.environ.get("LOG_DIR", "data")),
                        help="where run folders go (env LOG_DIR)")
    parser.add_argument("--extra", type=folder_suffix, default=None, help="suffix for the dataset's log folder")
    parser.add_argument("--device", default=None,
                        help="torch device; not given: cuda if available (the process's GPU under accelerate), else cpu")
    parser.add_argument("--dtype", default=None, choices=list(DTYPES), help="model precision; not given: float16 on GPU, float32 on CPU")
    parser.add_argument("--seed", type=seed_int, default=0, help="seed of the noise bank when --noise_path is not given")
    parser.add_argument("--noise_path", type=Path, default=None, help="saved noise bank (scripts/save_noise.py); not given: drawn from --seed")
    parser.add_argument("--n_trials", type=positive_int, default=1, help="noise draws per timestep")
    parser.add_argument("--no_progress", action="store_true", help="hide the progress bar")


def add_data_args(parser) -> None:
    """Which images a dataset run reads and how they are shared out: flags of eval_prob_adaptive.py and eval_prob_dit.py."""
    parser.add_argument("--dataset_root", type=Path, default=Path(os.environ.get("DATASET_ROOT", "datasets")),
                        help="where datasets live (env DATASET_ROOT); --dataset hf: the Hugging Face dataset itself")
    parser.add_argument("--subset_path", type=Path, default=None, help="dataset indices to evaluate: a .npy array, or a text file of integers (one a line)")
    parser.add_argument("--n_workers", type=positive_int, default=1, help="number of shards")
    parser.add_argument("--worker_idx", type=non_negative_int, default=0,
                        help="this shard, 0..n_workers-1: takes indices[worker_idx::n_workers]")
    parser.add_argument("--corruption", default=None, help="--dataset digits_c: corruption name (diffusion_classifier.data.corruptions)")
    parser.add_argument("--severity", type=int_in(1, 5), default=None, help="--dataset digits_c: corruption severity 1..5")
    parser.add_argument("--image_column", default=None,
                        help="--dataset hf: column of the images; not given: 'image' or 'img'")
    parser.add_argument("--label_column", default=None,
                        help="--dataset hf: column of the class labels; not given: 'label' or 'labels'")
    parser.add_argument("--skip_unreadable", action="store_true",
                        help="leave out images that cannot be decoded (listed in the final line and the manifest, "
                             "never counted in accuracy) instead of stopping with an error naming the file")
    parser.add_argument("--image_batch", type=positive_int, default=None,
                        help="images whose evaluations are packed into shared batches; not given: chosen for the device "
                             "(batch size // 8, at most 16)")


def dataset_options(args) -> dict:
    """The dataset-specific arguments of registry.get_dataset from the flags of add_data_args."""
    return dict(corruption=args.corruption, severity=args.severity, image_column=args.image_column,
                label_column=args.label_column)


def add_schedule_args(parser, mode: str = "", required: bool = True) -> None:
    """The evaluation schedule's flags (reference staging, the statistical schedule, weights, loss, running accuracy).

    `mode` prefixes their help (eval_prob_dit.py's "adaptive mode: "); `required`: --to_keep and --n_samples must be given.
    """
    from .engine import LOSSES

    default = {} if required else {"default": None}
    parser.add_argument("--to_keep", nargs="+", type=positive_int, required=required, **default,
                        help=f"{mode}candidates kept after each stage; last must be 1")
    parser.add_argument("--n_samples", nargs="+", type=positive_int, required=required, **default,
                        help=f"{mode}timesteps sampled at each stage (at most the model's training timesteps)")
    parser.add_argument("--schedule", default="reference", choices=["reference", "statistical"],
                        help=f"{mode}reference: staged pruning by --to_keep/--n_samples; statistical: paired-difference "
                             f"pruning up to max(--n_samples)")
    add_statistical_args(parser)
    parser.add_argument("--timestep_weights", type=Path, default=None,
                        help=f"{mode}JSON of learned timestep weights (scripts/fit_timestep_weights.py): rank by weighted "
                             f"errors; not given: {WEIGHTS_DEFAULT}")
    parser.add_argument("--class_offsets", default=None, choices=["shipped", "none"],
                        help=f"{mode}shipped (not given): where the local model folder's calibration.json holds class "
                             f"offsets fitted for these candidates, --loss and timestep weights, the schedule adds each "
                             f"class's to its errors (docs/calibration.md); none: the errors alone")
    parser.add_argument("--loss", default="l2", choices=list(LOSSES),
                        help=f"{mode}error between the prediction and its target (ε and ε̂ by default); log_l2: the log "
                             f"of the l2 error (classes compared by relative differences at each timestep)")
    parser.add_argument("--load_stats", action="store_true",
                        help=f"{mode}count already finished images into the running accuracy")


def add_candidate_args(parser, defaults: dict, unit: str) -> None:
    """Flags of the scripts that score an item's candidates one item at a time (run_refcoco.py,
    run_compositional.py): the schedule over the candidates, the model's packing and the run's place and shards.

    `defaults` holds the measured to_keep, n_samples and loss; `unit` names the items in the help ("queries").
    """
    from .data.transforms import INTERPOLATIONS
    from .engine import LOSSES

    parser.add_argument("--to_keep", nargs="+", type=positive_int, default=defaults["to_keep"],
                        help="candidates kept after each stage (capped at an item's candidates); last must be 1")
    parser.add_argument("--n_samples", nargs="+", type=positive_int, default=defaults["n_samples"],
                        help="timesteps sampled at each stage")
    parser.add_argument("--schedule", default="reference", choices=["reference", "statistical"],
                        help="reference: staged pruning by --to_keep/--n_samples; statistical: paired-difference "
                             "pruning up to max(--n_samples)")
    add_statistical_args(parser)
    parser.add_argument("--loss", default=defaults["loss"], choices=list(LOSSES),
                        help="error between the prediction and its target; log_l2: the log of the l2 error (candidates "
                             "compared by relative differences at each timestep)")
    parser.add_argument("--timestep_weights", type=Path, default=None,
                        help="JSON of learned timestep weights (scripts/fit_timestep_weights.py): the schedule and the "
                             f"scores use weighted errors; not given: {WEIGHTS_DEFAULT}")
    parser.add_argument("--batch_size", type=positive_int, default=None,
                        help="denoiser evaluations per batch; not given: chosen for the device")
    add_img_size_arg(parser, f"image size ({RESIZE_HELP}); not given: the model's own")
    parser.add_argument("--interpolation", default="bicubic", choices=list(INTERPOLATIONS), help="resize filter")
    parser.add_argument("--attention", default="sdpa", choices=["sdpa", "xformers"], help="attention kernel")
    add_run_args(parser)
    parser.add_argument("--n_workers", type=positive_int, default=1, help="number of shards")
    parser.add_argument("--worker_idx", type=non_negative_int, default=0,
                        help=f"this shard: takes {unit}[worker_idx::n_workers]")
    parser.add_argument("--skip_unreadable", action="store_true",
                        help=f"leave out {unit} whose image cannot be decoded (listed in the final line and the manifest)")


def check_candidate_args(args) -> None:
    """The checks of add_candidate_args' flags that involve several of them, before anything is read or written."""
    from .loop import shard
    from .noise import load_noise
    from .records import check_writable
    from .schedules.staged import validate_schedule
    from .schedules.statistical import make_schedule
    from .weighting import NO_WEIGHTS, load_weights

    validate_schedule(args.to_keep, args.n_samples)
    check_statistical_args(args)
    make_schedule(args.schedule, args.to_keep, args.n_samples, args.n_trials, **statistical_options(args))
    shard([], args.n_workers, args.worker_idx)
    if args.noise_path is not None:
        load_noise(args.noise_path)  # a bad noise file fails before the data is read and the model loads
    if getattr(args, "timestep_weights", None) is not None and str(args.timestep_weights) != NO_WEIGHTS:
        if getattr(args, "model", "sd") != "sd":
            raise InputError(f"--timestep_weights weights a diffusion model's errors (--model sd), got --model {args.model}")
        load_weights(args.timestep_weights)  # likewise a bad weights file (its length is checked against the model)
    check_writable(args.log_dir)


Z_DEFAULT = 3.0  # the plain rule's z (--z)


def add_statistical_args(parser) -> None:
    """The statistical schedule's flags, shared by eval_prob_adaptive.py and eval_prob_dit.py."""
    parser.add_argument("--z", type=positive_float, default=Z_DEFAULT, help="statistical schedule: prune at z paired standard errors")
    parser.add_argument("--min_samples", type=positive_int, default=None,
                        help="statistical schedule: timesteps before the first pruning, at most max(--n_samples) "
                             "(not given: 10, or with --delta the anytime rule's: docs/schedules.md)")
    parser.add_argument("--delta", type=probability, default=None,
                   help="statistical schedule: anytime-valid pruning with P(dropping the class of lowest expected error) <= delta, "
                        "delta in (0, 1) (replaces --z; see README)")
    parser.add_argument("--variance", default=None, choices=["iid", "stratified", "moderated", "moderated-stratified"],
                   help="statistical schedule: standard error from the sample variance (iid), from neighbouring "
                        "timesteps (stratified: prunes sooner, assumes errors vary smoothly with t), or either one "
                        "moderated across the classes (moderated, moderated-stratified: prunes after a few samples "
                        "among many classes) (not given: iid, or with --delta the anytime rule's)")
    parser.add_argument("--spending", default=None, choices=["even", "decaying"],
                   help="with --delta: how delta is shared over the looks: evenly over the looks of the schedule, or "
                        "6 delta / (pi^2 l^2) at look l (most at the first looks; valid for any number of looks) "
                        "(not given: even, or with --delta the anytime rule's)")
    parser.add_argument("--epsilon", type=fraction, default=None,
                   help="statistical schedule: also stop an image once no class can beat the leader by more than "
                        "epsilon x the leader's mean error (an indifference zone: with --delta, P(the answer is more "
                        "than that worse than the best class) <= delta); in [0, 1), e.g. 0.005; 0: none "
                        "(not given: none, or with --delta the anytime rule's)")


def check_statistical_args(args) -> None:
    """The statistical schedule's flags against --n_samples, before anything is written (they are read per image)."""
    given = [f"--{k}" for k in ("min_samples", "delta", "variance", "spending", "epsilon") if getattr(args, k) is not None]
    given = (["--z"] if args.z != Z_DEFAULT else []) + given
    if args.schedule != "statistical" and given:
        warn(f"{', '.join(given)} set(s) the statistical schedule, which this run does not use (--schedule "
             f"{args.schedule}): ignored; add --schedule statistical to use it")
    min_samples = statistical_options(args)["min_samples"]
    if args.schedule == "statistical" and args.n_samples and min_samples > max(args.n_samples):
        raise InputError(f"--min_samples must be in 1..max(--n_samples) = {max(args.n_samples)} for --schedule "
                         f"statistical, got {min_samples}")


def statistical_options(args) -> dict:
    """The statistical schedule's settings from the flags of add_statistical_args, those not given at their
    defaults (statistical.rule_settings), for make_schedule and the runs."""
    from .schedules.statistical import rule_settings

    return dict(z=args.z, delta=args.delta, **rule_settings(args.delta, args.variance, args.spending,
                                                            args.min_samples, args.epsilon))


def _flag_error(parser: argparse.ArgumentParser, message: str):
    """argparse's error as a user error, one line: `argument --delta: expected a finite number in (0, 1), got 'nan'`."""
    raise InputError(message)


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {one_line(str(message))}", file=sys.stderr if file is None else file)


def run(main: Callable, argv: list[str] | None = None, unit: str = "images") -> None:
    """Call main(argv) under the boundary and exit with its status; `unit` names what a record holds."""
    from . import records

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(argv)
    if not debug and "--verbose" not in argv:
        quiet_libraries()
    argv = [a for a in argv if a not in ("--debug", "--verbose")]
    previous = interrupts.install()
    written_before = records.records_written()
    parser_error = argparse.ArgumentParser.error
    argparse.ArgumentParser.error = _flag_error  # a bad flag is one line too, not the usage block
    show_warning = warnings.showwarning
    if not debug:  # the toolkit's warnings (a truncated prompt) read as its other messages: one line, no source
        warnings.showwarning = _one_line_warning
    try:
        if inspect.signature(main).parameters:
            main(argv)
        else:  # a main() that parses sys.argv itself
            sys.argv[1:] = argv
            main()
    except interrupts.Interrupted as e:
        if debug:
            import traceback

            traceback.print_exc()
        sys.stdout.flush()
        n = records.records_written() - written_before
        print(f"interrupted by {e}: {n} {unit} finished in this run are saved, none is half-written; "
              f"re-run the same command to resume", file=sys.stderr)
        sys.exit(e.exit_code)
    except BrokenPipeError:  # the output's reader has gone (`| head`): nothing more to say, to anyone
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except Exception as e:  # noqa: BLE001 - what is neither a user error nor a storage failure is re-raised
        if isinstance(e, UserError):
            error = e
        else:  # a full disk or unwritable folder that no write of the run wrapped is the user's too
            cause = records.storage_cause(e)
            name = os.fsdecode(cause.filename) if cause is not None and cause.filename is not None else None
            error = cause and records.storage_error(cause, name, left=f"{name or 'the file'} may be incomplete")
        if debug or error is None:
            raise
        sys.stdout.flush()
        print(f"error: {one_line(error)}", file=sys.stderr)
        sys.exit(USER_ERROR_EXIT)
    finally:
        argparse.ArgumentParser.error = parser_error
        warnings.showwarning = show_warning
        interrupts.restore(previous)
    sys.exit(0)
