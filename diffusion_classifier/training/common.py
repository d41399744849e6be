"""What every tiny model's training shares: the training data's captions and tokenizer, augmentation, the lr
schedule, the EMA, checkpoints, a warm start from a saved folder, the training loop (`train_loop`) and the diffusion
models' step over it (`fit`). The model cards' shared text is in cards.py."""
from __future__ import annotations

import json
import math
import string
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..errors import InputError
from ..interrupts import Interrupted, critical
from .data import DIGITS, TrainingData

NUM_CLASSES = DIGITS.num_classes
MAX_LENGTH = 32  # tokenizer model_max_length == text encoder max_position_embeddings
CAPTION_DROP = 0.1  # empty caption / null class: gives an unconditional score
SHIFT_PROB = 0.5  # probability of a random +-1 px translation of a training image
TEMPLATES = DIGITS.templates  # the digits' caption wordings; the first is the wording of the digits prompts CSV

def captions_for(label: int, data: TrainingData = DIGITS) -> list[str]:
    """Every caption wording for one class."""
    return data.captions_for(label)


def caption_sampler(gen: torch.Generator, data: TrainingData = DIGITS):
    """(prompts, draw): every caption wording of every class (row c*K+k) then "" (last row), and
    draw(labels) -> the prompt row of each image: one of its class's wordings, or "" with CAPTION_DROP."""
    prompts = [cap for c in range(data.num_classes) for cap in data.captions_for(c)] + [""]
    n_templates, empty_row = len(data.templates), len(prompts) - 1

    def draw(labels: torch.Tensor) -> torch.Tensor:
        row = labels * n_templates + torch.randint(0, n_templates, (len(labels),), generator=gen)
        row[torch.rand(len(labels), generator=gen) < CAPTION_DROP] = empty_row
        return row

    return prompts, draw



def caption_words(data: TrainingData = DIGITS) -> list[str]:
    """The words of all captions (letters only), which the tokenizer merges into single tokens."""
    words = set()
    for c in range(data.num_classes):
        for cap in data.captions_for(c):
            for w in "".join(ch if ch.isalpha() else " " for ch in cap).split():
                words.add(w)
    return sorted(words)


def bpe_pieces(pieces: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Byte-pair encoding of one word's symbols: merge the adjacent pair of lowest rank until none applies."""
    pieces = list(pieces)
    while len(pieces) > 1:
        pairs = [(ranks.get(p, len(ranks) + 1), i) for i, p in enumerate(zip(pieces, pieces[1:]))]
        rank, i = min(pairs)
        if rank > len(ranks):
            break
        pieces[i:i + 2] = [pieces[i] + pieces[i + 1]]
    return pieces


def build_tokenizer(folder: Path, data: TrainingData = DIGITS):
    """Character-level BPE CLIPTokenizer plus whole-word merges for the caption vocabulary."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    symbols = list(string.ascii_lowercase + string.digits + string.punctuation)
    vocab = {s: i for i, s in enumerate(symbols)}
    for s in symbols:
        vocab[s + "</w>"] = len(vocab)
    merges: list[str] = []
    ranks: dict[tuple[str, str], int] = {}
    for word in caption_words(data):
        if len(word) < 2:
            continue
        # the pieces the merges so far leave of the word, joined left to right: "p h", "ph o", ..., "phot o</w>";
        # new merges rank after all earlier ones, so the earlier merges apply first and these finish the word
        pieces = bpe_pieces(list(word[:-1]) + [word[-1] + "</w>"], ranks)
        left = pieces[0]
        for right in pieces[1:]:
            merged = left + right
            if (left, right) not in ranks:
                ranks[(left, right)] = len(merges)
                merges.append(f"{left} {right}")
            if merged not in vocab:
                vocab[merged] = len(vocab)
            left = merged
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    vocab_file, merges_file = folder / "vocab.json", folder / "merges.txt"
    vocab_file.write_text(json.dumps(vocab, indent=0) + "\n")
    merges_file.write_text("#version: 0.2\n" + "".join(m + "\n" for m in merges))
    tok = CLIPTokenizer(str(vocab_file), str(merges_file), model_max_length=MAX_LENGTH)
    tok.save_pretrained(folder)
    check_tokenizer(CLIPTokenizer.from_pretrained(folder), data)
    return tok


def check_tokenizer(tok, data: TrainingData = DIGITS) -> None:
    """Every caption encodes without unknown symbols, each word as one token, within max length."""
    for c in range(data.num_classes):
        for cap in data.captions_for(c):
            ids = tok(cap, truncation=False).input_ids
            tokens = tok.convert_ids_to_tokens(ids)
            body = tokens[1:-1]
            if tokens[0] != tok.bos_token or tokens[-1] != tok.eos_token or tok.eos_token in body:
                raise RuntimeError(f"caption {cap!r} has unknown symbols: {tokens}")
            if "".join(t.replace("</w>", "") for t in body) != cap.replace(" ", ""):
                raise RuntimeError(f"caption {cap!r} does not round-trip: {tokens}")
            words = [t for t in body if t.replace("</w>", "").isalpha()]
            if len(words) != len([w for w in "".join(ch if ch.isalpha() else " " for ch in cap).split()]):
                raise RuntimeError(f"caption {cap!r} splits a word: {tokens}")
            if len(ids) > MAX_LENGTH:
                raise RuntimeError(f"caption {cap!r} needs {len(ids)} tokens > {MAX_LENGTH}")


def train_images(data: TrainingData = DIGITS) -> tuple[torch.Tensor, torch.Tensor]:
    """Train split as (N, 1, H, W) floats in [-1, 1] and (N,) labels."""
    return data.load()


def validation_split(x: torch.Tensor, y: torch.Tensor, fraction: float, seed: int = 1):
    """((x, y) to train on, (x, y) to validate on): a stratified `fraction` of the given (train) images."""
    from sklearn.model_selection import train_test_split

    if not 0 < fraction < 1:
        raise InputError(f"validation fraction must be in (0, 1), got {fraction}")
    fit, val = train_test_split(torch.arange(len(y)).numpy(), test_size=fraction, stratify=y.numpy(), random_state=seed)
    fit, val = torch.from_numpy(fit), torch.from_numpy(val)
    return (x[fit], y[fit]), (x[val], y[val])

HELDOUT_FILE = "heldout_train.json"  # in a model folder: the train-split indices held out of its training
HOLDOUT_SEED = 1


def holdout_split(x: torch.Tensor, y: torch.Tensor, per_class: int, seed: int = HOLDOUT_SEED):
    """((x, y) to train on, sorted indices held out): `per_class` images of every class of the given (train) split
    are held out, chosen as datasets.stratified_indices chooses them; they are never trained on, so a model's
    timestep weights and temperature can be fitted on them (see scripts/train_tiny_models.py --holdout)."""
    from ..data.subsets import stratified_indices

    counts = torch.bincount(y)
    if per_class < 1 or per_class >= int(counts[counts > 0].min()):
        raise InputError(f"--holdout must be in 1..{int(counts[counts > 0].min()) - 1} images per class "
                         f"(the smallest class has {int(counts[counts > 0].min())}), got {per_class}")
    held = stratified_indices(y.numpy(), per_class, seed)
    keep = torch.ones(len(y), dtype=torch.bool)
    keep[held] = False
    return (x[keep], y[keep]), held



def random_shift(x: torch.Tensor, prob: float, gen: torch.Generator) -> torch.Tensor:
    """Translate each (N, 1, H, W) image by a random -1..1 px in x and y with probability prob."""
    n, _, h, w = x.shape
    padded = F.pad(x[:, 0], (1, 1, 1, 1), value=-1.0)  # background is -1
    shift = torch.randint(0, 3, (n, 2), generator=gen)
    shift[torch.rand(n, generator=gen) >= prob] = 1  # offset 1 == no shift
    rows = shift[:, :1] + torch.arange(h)  # (N, H)
    cols = shift[:, 1:] + torch.arange(w)  # (N, W)
    out = padded[torch.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
    return out[:, None]


def draw_batch(x_all: torch.Tensor, y_all: torch.Tensor, batch: int, gen: torch.Generator, parts: int = 1,
               item_classes: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A training batch (grey (B, 1, h, parts * w), labels (B,)): `batch * parts` uniform draws of the items, each
    randomly shifted; with parts = 2 consecutive draws stand side by side (left, right) and the label is the
    ordered pair, left * item_classes + right (see TrainingData.parts)."""
    idx = torch.randint(0, len(x_all), (batch * parts,), generator=gen)
    x, y = random_shift(x_all[idx], SHIFT_PROB, gen), y_all[idx]
    if parts == 1:
        return x, y
    _, c, h, w = x.shape
    x = x.view(batch, parts, c, h, w).permute(0, 2, 3, 1, 4).reshape(batch, c, h, parts * w)
    y = y.view(batch, parts)
    label = y[:, 0]
    for k in range(1, parts):
        label = label * item_classes + y[:, k]
    return x, label


def to_rgb(x: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) -> (N, 3, H, W) with identical channels, as RGB-converted greyscale images."""
    return x.expand(-1, 3, -1, -1).contiguous()


def lr_at(step: int, steps: int, lr: float, warmup: int = 100) -> float:
    """Linear warmup then cosine decay to 5% of lr."""
    if step < warmup:
        return lr * (step + 1) / warmup
    p = (step - warmup) / max(1, steps - warmup)
    return lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * p)))


class Ema:
    """Exponential moving average of parameters, with the usual (1 + n) / (10 + n) warmup."""

    def __init__(self, modules, decay: float = 0.999):
        self.params = [p for m in modules for p in m.parameters()]
        self.shadow = [p.detach().clone() for p in self.params]
        self.decay, self.n = decay, 0

    @torch.no_grad()
    def update(self) -> None:
        self.n += 1
        d = min(self.decay, (1 + self.n) / (10 + self.n))
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1 - d)

    @torch.no_grad()
    def copy_to_params(self) -> None:
        for p, s in zip(self.params, self.shadow):
            p.copy_(s)


def warm_start(parts: dict, folder: Path, held: list[int] | None) -> dict:
    """Load a saved model folder's weights into freshly built modules of the same architecture, before training
    goes on from them; returns that folder's training stats (its `training.json`), the earlier stages of the new
    model. `parts` maps each module's subfolder ("unet", "text_encoder", ...) to the module; `held` is the new
    run's held-out train indices (None: none), which must be those of the folder, so that no image held out now
    was trained on before."""
    from safetensors.torch import load_file

    folder = Path(folder)
    stats_file = folder / "training.json"
    try:
        stats = json.loads(stats_file.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"--init {folder}: expected a model folder written by this script, with its training.json; "
                         f"{stats_file} cannot be read ({e})") from None
    try:
        before = json.loads((folder / HELDOUT_FILE).read_text())["indices"] if (folder / HELDOUT_FILE).is_file() else None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"--init {folder}: its {HELDOUT_FILE} cannot be read ({e})") from None
    if sorted(before or []) != sorted(held or []):
        raise InputError(f"--init {folder} held out {len(before or [])} train images and this run "
                         f"{len(held or [])}{' others' if len(before or []) == len(held or []) else ''}: go on with "
                         f"the --holdout it was trained with, so no held-out image was ever trained on")
    for sub, module in parts.items():
        files = sorted((folder / sub).glob("*.safetensors"))
        if len(files) != 1:
            raise InputError(f"--init {folder}: expected one safetensors file in {folder / sub}, found {len(files)}")
        state = load_file(str(files[0]))
        mine = module.state_dict()
        differ = sorted(set(state) ^ set(mine)) + [k for k in state if k in mine and state[k].shape != mine[k].shape]
        if differ:
            raise InputError(f"--init {folder}: its {sub} has another architecture than the one asked for "
                             f"({len(differ)} tensors differ, e.g. {differ[0]}); give the flags it was trained with")
        module.load_state_dict(state)
    return stats


def count_params(*modules) -> int:
    """Number of parameters."""
    return sum(p.numel() for m in modules for p in m.parameters())


def folder_size(folder: Path) -> int:
    """Bytes of all safetensors files under folder."""
    return sum(f.stat().st_size for f in folder.rglob("*.safetensors"))



class TrainingPaused(Exception):
    """Training stopped early, as asked (a step or time limit), after saving its checkpoint."""

    def __init__(self, step: int, steps: int, path: Path):
        self.step, self.steps, self.path = step, steps, path
        super().__init__(f"paused at step {step}/{steps}; checkpoint {path}")


@dataclass
class Checkpointing:
    """Where and when `fit` saves its state, and whether it resumes from it.

    The checkpoint holds the modules, the EMA, the optimizer, the data generator's and torch's RNG states,
    the step and the loss averages, so a resumed run continues exactly where the saved one stopped. It is
    written atomically every `every_s` seconds, on SIGINT/SIGTERM (after the step under way) and when the run
    pauses at `stop_at` steps or after `time_limit_s` seconds of this run; `settings` must match on resume.
    Both limits are checked after each step: `time_limit_s=0` pauses after the first step of this run, None
    (not 0) means no limit.
    """

    path: Path
    settings: dict = field(default_factory=dict)
    resume: bool = False
    every_s: float = 300.0
    stop_at: int | None = None
    time_limit_s: float | None = None


def _save_checkpoint(ckpt: Checkpointing, modules, opt, ema, gen, step: int, avg: dict, wall: float) -> None:
    from ..records import atomic_write_bytes

    state = {
        "step": step, "wall": wall, "avg": dict(avg), "settings": dict(ckpt.settings),
        "modules": [m.state_dict() for m in modules], "optimizer": opt.state_dict(),
        "ema": [s.clone() for s in ema.shadow], "ema_n": ema.n,
        "generator": gen.get_state(), "torch_rng": torch.get_rng_state(),
    }
    atomic_write_bytes(ckpt.path, lambda f: torch.save(state, f))


def _load_checkpoint(ckpt: Checkpointing, modules, opt, ema, gen) -> tuple[int, dict, float]:
    """Restore a checkpoint into the training state; (step, loss averages, wall seconds so far)."""
    from ..records import load_failure

    try:
        state = torch.load(ckpt.path, map_location="cpu", weights_only=True)
        saved = state["settings"]
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user-facing problem
        raise InputError(f"checkpoint {ckpt.path} cannot be read ({load_failure(e)}); expected a training checkpoint "
                         f"written by this script: delete it to start again") from None
    differ = [f"{k}: checkpoint {saved.get(k)!r}, command {v!r}" for k, v in ckpt.settings.items() if saved.get(k) != v]
    if differ:
        raise InputError(f"checkpoint {ckpt.path} was made with other settings ({'; '.join(differ)}); resume with the "
                         f"checkpoint's settings, or delete it to start again")
    for m, sd in zip(modules, state["modules"]):
        m.load_state_dict(sd)
    opt.load_state_dict(state["optimizer"])
    for s, saved_s in zip(ema.shadow, state["ema"]):
        s.copy_(saved_s)
    ema.n = state["ema_n"]
    gen.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    return state["step"], state["avg"], state["wall"]


def train_loop(modules, steps: int, lr: float, gen: torch.Generator, desc: str, step_terms,
               checkpoint: Checkpointing | None = None, after_step=None) -> tuple[dict[str, float], float]:
    """The optimisation every model shares; returns (moving averages of the loss terms, wall seconds).

    AdamW (weight decay 0.01) with warmup and cosine decay of the lr, grad-norm clip 1, and an EMA of the
    weights, which is copied into the modules at the end (they are left in eval mode). `step_terms()` draws one
    batch (from `gen` only, so a checkpoint restores it) and returns the named loss terms, of which "loss" is
    minimised; `after_step()`, if given, runs after each optimizer step, before the EMA update (e.g. a clamp).
    With `checkpoint`, the state is saved as it says (and restored first when it resumes); a run that stops at
    its step or time limit raises TrainingPaused after saving.
    """
    params = [p for m in modules for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    ema = Ema(modules)
    for m in modules:
        m.train()
    avg: dict[str, float] = {}
    step, wall_before = 0, 0.0
    if checkpoint is not None and checkpoint.resume and checkpoint.path.is_file():
        step, avg, wall_before = _load_checkpoint(checkpoint, modules, opt, ema, gen)
    start = last_save = time.time()
    bar = tqdm(total=steps, initial=step, desc=desc, dynamic_ncols=True, mininterval=5)
    if avg:
        bar.set_postfix({k: f"{v:.4f}" for k, v in avg.items()})

    def save() -> None:
        _save_checkpoint(checkpoint, modules, opt, ema, gen, step, avg, wall_before + time.time() - start)

    try:
        while step < steps:
            with critical():  # SIGINT/SIGTERM wait for the step to end, so a checkpoint is never half a step
                for g in opt.param_groups:
                    g["lr"] = lr_at(step, steps, lr)
                terms = step_terms()
                opt.zero_grad(set_to_none=True)
                terms["loss"].backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                if after_step is not None:
                    after_step()
                ema.update()
                for k, v in terms.items():
                    avg[k] = v.item() if k not in avg else 0.99 * avg[k] + 0.01 * v.item()
                step += 1
            bar.update(1)
            bar.set_postfix({k: f"{v:.4f}" for k, v in avg.items()}, refresh=False)
            if checkpoint is None or step == steps:
                continue
            now = time.time()
            limit = checkpoint.time_limit_s is not None and now - start >= checkpoint.time_limit_s  # this run's time
            if step == checkpoint.stop_at or limit:
                save()
                bar.close()
                raise TrainingPaused(step, steps, checkpoint.path)
            if now - last_save >= checkpoint.every_s:
                save()
                last_save = now
    except Interrupted:
        if checkpoint is not None:
            save()
            bar.close()
            print(f"checkpoint saved at step {step}/{steps}: {checkpoint.path}", flush=True)
        raise
    bar.close()
    wall = wall_before + time.time() - start
    ema.copy_to_params()
    for m in modules:
        m.eval()
    return avg, wall


def fit(modules, images, noising, steps: int, batch: int, lr: float, gen: torch.Generator, desc: str,
        draw_cond, losses, device: str = "cpu", checkpoint: Checkpointing | None = None, parts: int = 1,
        item_classes: int = 0) -> tuple[dict[str, float], float]:
    """The diffusion models' training (train_loop over a denoising step); returns (loss averages, wall seconds).

    Each step draws from the CPU generator, in this order: the images (randomly shifted; `parts` items side by
    side, see draw_batch), `draw_cond(labels)` (the conditioning, with its dropout), `noising.draw_times(batch,
    gen)` (the timesteps or noise levels) and the noise; `noising.add_noise(x0, t, eps)` forms x_t, and
    `losses(x0, cond, t, eps, x_t)` returns the named terms, of which "loss" is minimised. `checkpoint`: see
    train_loop.
    """
    x_all, y_all = images

    def step_terms() -> dict[str, torch.Tensor]:
        x0, labels = draw_batch(x_all, y_all, batch, gen, parts, item_classes)
        x0 = to_rgb(x0)
        cond = draw_cond(labels)
        t = noising.draw_times(batch, gen)
        eps = torch.randn(x0.shape, generator=gen)
        x0, t, eps = x0.to(device), t.to(device), eps.to(device)
        xt = noising.add_noise(x0, t, eps)
        return losses(x0, cond, t, eps, xt)

    return train_loop(modules, steps, lr, gen, desc, step_terms, checkpoint)
