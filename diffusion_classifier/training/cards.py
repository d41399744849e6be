"""The model cards' shared text: the data line, the measured figures, the training stages and the retrain commands
that reproduce a model folder (each kind's card writer in training/<kind>.py composes them)."""
from __future__ import annotations

from .common import SHIFT_PROB
from .data import training_data

# Test accuracy measured on the committed weights (see each model card for the evaluation).
EVAL_PROTOCOL = (
    "Measured on the committed weights over the 359 test images (never trained on). Paired evaluation: per image,\n"
    "50 evenly spaced timesteps t = 10, 30, ..., 990 (`range(10, 1000, 20)`), one noise per timestep\n"
    "(`torch.randn(50, 3, 8, 8)` seeded with 42, the same bank for every image and every class); per (t, class)\n"
    "the error is the mean over C, H, W of (eps - eps_hat)^2 (l2) or |eps - eps_hat| (l1); the prediction is the\n"
    "class with the lowest mean error over the 50 timesteps (10 classes x 50 timesteps = 500 evaluations per image)."
)


def earlier_stages(s: dict) -> list[dict]:
    """The stages a warm-started model went through before its last one (`s["init"]`, nested), oldest first."""
    stages, prev = [], s.get("init")
    while prev:
        stages.insert(0, prev)
        prev = prev.get("init")
    return stages


def retrain_command(which: str, s: dict, extra: str = "") -> str:
    """The command that reproduces a model folder (`extra`: the kind's own flags)."""
    where = f" --device {s['device']}" if s.get("device", "cpu") != "cpu" else ""
    selection = f" --val-fraction {s['val_fraction']:g} --out OUT" if "val_fraction" in s else ""
    data = f" --data {s['data']}" if s.get("data", "digits") != "digits" else ""
    selection += f" --holdout {s['holdout_per_class']}" if s.get("holdout_per_class") else ""
    return (
        f"python3 scripts/train_tiny_models.py{data} --model {which} --steps {s['steps']} --batch {s['batch']} --lr {s['lr']}"
        f"{extra} --seed {s['seed']} --threads {s['threads']}{where}{selection}"
    )


def retrain_commands(which: str, s: dict, flags) -> str:
    """The commands that reproduce a model folder, one per training stage (`flags(stats)`: the kind's own flags);
    a warm-started stage goes on from the folder the one before it wrote."""
    folder = f"diffusion_classifier/tiny_models/{training_data(s.get('data', 'digits')).folders[which]}"
    stages = [*earlier_stages(s), s]
    return "\n".join(retrain_command(which, st, flags(st)) + (f" --init {folder}" if i else "")
                     for i, st in enumerate(stages))


def warm_card_lines(s: dict) -> str:
    """The model card's lines on the stages a warm-started model went through before its last (empty if none)."""
    stages = earlier_stages(s)
    if not stages:
        return ""
    told = "; ".join(f"{st['steps']} steps of batch {st['batch']} at lr {st['lr']} ({st['wall'] / 60:.1f} min, final "
                     f"loss {st['loss']:.4f})" for st in stages)
    total = sum(st["wall"] for st in [*stages, s]) / 60
    return (f"\n  These steps went on from the weights (and EMA) of an earlier training, with a new warmup and cosine: "
            f"{told}.\n  Wall time of all stages: {total:.1f} min, {sum(st['steps'] for st in [*stages, s])} steps.")


def card_data_line(s: dict) -> str:
    """The model card's **Data** bullet for the training data named in the stats `s`."""
    data = training_data(s.get("data", "digits"))
    h, w = data.shape
    held = (f", less {s['holdout_per_class']} images per class held out (never trained on; their indices are in "
            f"`heldout_train.json`)" if s.get("holdout_per_class") else "")
    what = "items" if data.parts > 1 else "images"
    return (f"- **Data**: {data.title}, {data.split_note}{held}\n  ({s['n_train']} {what}). Each image is {h}x{w}, converted to RGB (3 identical channels)\n"
            f"  and normalised to [-1, 1] (x / 127.5 - 1). Augmentation: a random +-1 px translation with probability {SHIFT_PROB}.")


def card_measured(s: dict, digits_text: str) -> str:
    """The model card's accuracy text: `digits_text` for the digits models, the measured figures otherwise."""
    data = s.get("data", "digits")
    if data == "digits":
        return digits_text
    if data == "fashion_pairs":
        where = ("Measured on pairs of Fashion-MNIST test items through run_compositional.py (order, object and "
                 "relation swaps) and eval_prob_adaptive.py (the 100-way classification of the ordered pair): see "
                 "`benchmarks/results/compositional_fashion.json` and docs/compositional.md.")
    else:
        where = ("Measured on the Fashion-MNIST test split through the toolkit: see "
                 "`benchmarks/results/fashion_*.json` and the README's Fashion-MNIST section.")
    return s.get("measured") or where
