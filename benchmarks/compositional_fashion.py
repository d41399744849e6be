"""The paper's compositional claim on real images: fashion-pairs (a diffusion model of two Fashion-MNIST items side
by side) against fashion-pairs-clip (a contrastive model trained on the same pairs), through run_compositional.py
and eval_prob_adaptive.py.

- swaps: order, object and relation swaps of `a A to the left of a B.` on pairs of *test* items, at
  run_compositional.py's defaults, for both models (lib/pairs.py writes the items); statistical: the same with
  the anytime-valid schedule;
- weights: the same swaps built from the model's *held-out train* items (heldout_train.json) scored in full,
  timestep weights and a temperature fitted on them (scripts/fit_timestep_weights.py), and the test swaps ranked
  by weighted errors (replayed on the swaps run's own evaluations); l1: the held-out swaps with --loss l1;
- classify / staged: the 100-way classification of the ordered pair (an ImageFolder, one test pair per class,
  and the 100-row prompts CSV) with the statistical schedule (its defaults, and the plain rule it had before
  benchmarks/default_rule.py chose them) / with the staged schedule in the CIFAR-10 command's shape (10,000
  evaluations per image); log: the statistical schedule with --loss log_l2;
- classes: evaluations per image of the statistical schedule (the plain rule) as the number of classes grows
  (10, 25, 50, 100 pair classes, 100 images each), beside the staged schedule's fixed cost (plot:
  compositional_classes.png).

    python benchmarks/compositional_fashion.py --configs swaps statistical weights l1
    python benchmarks/compositional_fashion.py --configs classify log classes
    python benchmarks/compositional_fashion.py --configs staged
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from lib import CACHE, RESULTS, ROOT, HelpFormatter, entry_script
from lib.pairs import fashion_words, pair_folder, swap_items, write_prompts
from lib.results import write_result

OUT = RESULTS / "compositional_fashion.json"
MODELS = ROOT / "diffusion_classifier" / "tiny_models"
PAIRS = CACHE / "compositional"
STATISTICAL = ["--schedule", "statistical", "--delta", "0.05", "--to_keep", "1", "--n_samples", "200"]
# the anytime rule before benchmarks/default_rule.py chose its defaults (the classes sweep was measured with it)
PLAIN_RULE = ["--variance", "iid", "--spending", "even", "--min_samples", "10", "--epsilon", "0"]
STAGED = ["--to_keep", "10", "1", "--n_samples", "50", "500"]  # the reference's CIFAR-10 command's shape
CLASS_COUNTS = (10, 25, 50, 100)


def items(split: str, per_task: int, seed: int) -> Path:
    """The swap items of the test split, or of fashion-pairs' held-out train items ("heldout"), written once."""
    from diffusion_classifier.data.fashion_mnist import load_arrays

    folder = PAIRS / f"swaps_{split}_{per_task}_seed{seed}"
    if (folder / "done").is_file():
        return folder / f"{folder.name}.jsonl"
    images, labels = load_arrays("test" if split == "test" else "train")
    if split == "heldout":
        held = json.loads((MODELS / "fashion-pairs" / "heldout_train.json").read_text())["indices"]
        images, labels = images[held], labels[held]
    path = swap_items(images, labels, fashion_words()[0], per_task, seed, folder)
    (folder / "done").write_text("")
    return path


def compositional(path: Path, *flags: str, tag: str = "") -> dict:
    """run_compositional.main on the items (resumed from its records); its tables and cost."""
    argv = ["--dataset", "jsonl", "--data_path", str(path), "--log_dir", str(PAIRS / "runs"), "--no_progress", *flags]
    if tag:
        argv += ["--extra", tag]
    r = entry_script("run_compositional").main(argv)
    return {"flags": " ".join(flags), "accuracy": r["accuracy"], "macro_accuracy": r["macro_accuracy"], "n": r["n"],
            "per_task": r["per_task"], "evaluations_per_item": r["evaluations_per_item"], "line": r["line"]}


def run_folder(result: dict) -> str:
    return result["line"].split(": accuracy")[0]


def replay_weighted(folder: str, weights: list[float]) -> dict:
    """Accuracy per task when a full run's own evaluations are ranked by weighted mean errors: what
    run_compositional.py --timestep_weights computes on the same (t, noise) (tests/test_compositional.py)."""
    from diffusion_classifier.records import load_record
    from diffusion_classifier.tasks.candidates import candidate_scores

    w = torch.tensor(weights, dtype=torch.float64)
    hits: dict[str, list[bool]] = {}
    for path in sorted(Path(folder).glob("*.pt")):
        r = load_record(path)
        scores = candidate_scores(r["errors"], len(r["captions"]), w)
        hits.setdefault(r["task"], []).append(int(np.argmin(scores)) == r["label"])
    per_task = {k: {"accuracy": 100.0 * float(np.mean(v)), "n": len(v)} for k, v in sorted(hits.items())}
    return {"per_task": per_task, "macro_accuracy": float(np.mean([t["accuracy"] for t in per_task.values()]))}


def classify_set(per_class: int, seed: int, classes: list[int] | None = None) -> tuple[Path, Path]:
    """An ImageFolder of test pairs (per_class of each pair class, or of `classes`) and its prompts CSV."""
    from diffusion_classifier.data.fashion_mnist import load_arrays

    classes = None if classes is None else sorted(classes)
    name = f"k{100 if classes is None else len(classes)}_{per_class}_seed{seed}"
    root = PAIRS / "folders" / name
    csv = PAIRS / "folders" / f"{name}_prompts.csv"
    if not (root / "done").is_file():
        images, labels = load_arrays("test")
        words, names = fashion_words()
        pair_folder(images, labels, len(words), per_class, seed, root, classes)
        write_prompts(csv, words, names, classes)
        (root / "done").write_text("")
    return root, csv


def classify(root: Path, csv: Path, *flags: str) -> dict:
    argv = ["--version", "fashion-pairs", "--dataset", "imagefolder", "--dataset_root", str(root), "--split", "test",
            "--prompt_path", str(csv), "--log_dir", str(PAIRS / "classify" / root.name), "--no_progress", *flags]
    from diffusion_classifier.records import load_record

    folder = Path(entry_script("eval_prob_adaptive").main(argv)["folder"])
    records = [load_record(f) for f in sorted(folder.glob("*.pt"))]  # this run's and earlier runs' images alike
    evaluations = [sum(len(e["t"]) for e in r["errors"].values()) for r in records]
    return {"flags": " ".join(flags), "accuracy": 100.0 * np.mean([r["pred"] == r["label"] for r in records]),
            "images": len(records), "evaluations_per_image": float(np.mean(evaluations)),
            "max_evaluations_per_image": int(max(evaluations)), "folder": str(folder)}


def plot_classes(rows: list[dict], path: Path) -> None:
    """Evaluations per image against the number of classes: the statistical schedule (mean and most) and the
    staged schedule's fixed cost, with each point's top-1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = [r["classes"] for r in rows]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ax.plot(k, [r["staged_evaluations_per_image"] for r in rows], "s--", label="staged, keep 10 1 / samples 50 500")
    ax.plot(k, [r["evaluations_per_image"] for r in rows], "o-", label="statistical, delta 0.05, plain rule (mean)")
    ax.plot(k, [r["max_evaluations_per_image"] for r in rows], "v:", label="statistical (most for one image)")
    for r in rows:
        ax.annotate(f"{r['accuracy']:.0f}%", (r["classes"], r["evaluations_per_image"]), textcoords="offset points",
                    xytext=(4, -12), fontsize=8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(k, [str(v) for v in k])
    ax.set_xlabel("classes (ordered pairs of Fashion-MNIST items)")
    ax.set_ylabel("denoiser evaluations per image")
    ax.set_title("fashion-pairs: cost against the number of classes\n(top-1 beside each point)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_cards(results: dict) -> None:
    """The measured figures into each model's training.json ("measured") and its card, rewritten from them."""
    from diffusion_classifier.training.contrastive import write_clip_card
    from diffusion_classifier.training.sd import write_sd_card

    def cost(r: dict) -> str:  # a contrastive model scores each image and caption once: no denoiser evaluations
        return f"{r['evaluations_per_item']:.0f}" if r["evaluations_per_item"] else "—"

    def swaps_table(rows: list[tuple[str, dict]]) -> str:
        lines = ["| scorer | order | object | relation | macro | evaluations / item |", "|---|---:|---:|---:|---:|---:|"]
        for name, r in rows:
            t = r["per_task"]
            lines.append(f"| {name} | {t['order']['accuracy']:.1f}% | {t['object']['accuracy']:.1f}% | "
                         f"{t['relation']['accuracy']:.1f}% | {r['macro_accuracy']:.1f}% | {cost(r)} |")
        return "\n".join(lines)

    swaps = results["swaps"]
    intro = (f"Measured on {swaps['per_task']} order, object and relation swaps each, built from pairs of Fashion-MNIST "
             "*test* items (`python benchmarks/compositional_fashion.py --configs swaps`; docs/compositional.md), "
             "through run_compositional.py at its defaults:\n\n")
    rows = [("fashion-pairs (diffusion classifier)", swaps["fashion-pairs"]),
            ("fashion-pairs-clip (contrastive, same data)", swaps["fashion-pairs-clip"])]
    extra = ""
    stat = "statistical schedule, --delta 0.05 --to_keep 1 --n_samples 200"
    for key, label in (("classify_100_statistical_plain", stat + " with the rule of " + " ".join(PLAIN_RULE)),
                       ("classify_100_statistical", stat + " (its default rule)"),
                       ("classify_100_statistical_log", stat + " --loss log_l2"),
                       ("classify_100_staged", "staged schedule, --to_keep 10 1 --n_samples 50 500")):
        if key in results:
            r = results[key]
            extra += (f"\n- fashion-pairs, 100-way classification of the ordered pair ({r['images']} test pairs, one per class), "
                      f"{label}: {r['accuracy']:.1f}% top-1 at {r['evaluations_per_image']:.0f} evaluations per image.")
    measured = intro + swaps_table(rows) + ("\n" + extra if extra else "")
    for name, writer in (("fashion-pairs", write_sd_card), ("fashion-pairs-clip", write_clip_card)):
        stats_file = MODELS / name / "training.json"
        stats = json.loads(stats_file.read_text())
        stats["measured"] = measured
        stats_file.write_text(json.dumps(stats, indent=1) + "\n")
        writer(MODELS / name, stats)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--configs", nargs="+", default=["swaps", "weights"],
                   choices=["swaps", "statistical", "weights", "l1", "classify", "log", "staged", "classes", "cards"],
                   help="what to measure (module docstring); cards: write the measured figures into both model cards")
    p.add_argument("--per_task", type=int, default=200, help="items per swap task")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out: dict = {}
    sd, clip = ["--version", "fashion-pairs"], ["--model", "clip", "--model_path", str(MODELS / "fashion-pairs-clip")]
    test = items("test", args.per_task, 0) if {"swaps", "statistical", "weights"} & set(args.configs) else None
    if "swaps" in args.configs:
        out["swaps"] = {"per_task": args.per_task, "fashion-pairs": compositional(test, *sd)}
        if (MODELS / "fashion-pairs-clip").is_dir():
            out["swaps"]["fashion-pairs-clip"] = compositional(test, *clip)
    if "statistical" in args.configs:  # the same test swaps, captions pruned by the anytime-valid rule
        out["swaps_statistical"] = compositional(test, *sd, "--schedule", "statistical", "--delta", "0.05",
                                                 "--n_samples", "200")
    if "weights" in args.configs:
        held = compositional(items("heldout", args.per_task, 1), *sd)
        weights = PAIRS / "fashion_pairs_timestep_weights.json"
        subprocess.run([sys.executable, str(ROOT / "scripts" / "fit_timestep_weights.py"), run_folder(held), "--out",
                        str(weights)], check=True)
        fitted = json.loads(weights.read_text())
        plain = compositional(test, *sd)  # read back from its records (the swaps config computed them)
        out["weights"] = {"heldout_swaps": held, "kind": fitted.get("kind"), "temperature": fitted.get("temperature"),
                          "test_swaps_replayed": replay_weighted(run_folder(plain), fitted["weights"]),
                          "test_swaps_uniform": plain["per_task"]}
    if "l1" in args.configs:  # the default loss against l1, on the held-out swaps
        out["heldout_l1"] = compositional(items("heldout", args.per_task, 1), *sd, "--loss", "l1")
    if {"classify", "log", "staged"} & set(args.configs):
        root, csv = classify_set(1, 0)  # entries of their own: a later run of one keeps the other's (merge)
        if "classify" in args.configs:
            out["classify_100_statistical"] = classify(root, csv, *STATISTICAL)
            out["classify_100_statistical_plain"] = classify(root, csv, *STATISTICAL, *PLAIN_RULE)
        if "log" in args.configs:
            out["classify_100_statistical_log"] = classify(root, csv, *STATISTICAL, "--loss", "log_l2")
        if "staged" in args.configs:
            out["classify_100_staged"] = classify(root, csv, *STAGED)
    if "classes" in args.configs:
        rng = np.random.default_rng(0)
        rows = []
        for k in CLASS_COUNTS:
            classes = None if k == 100 else sorted(rng.choice(100, size=k, replace=False).tolist())
            root, csv = classify_set(100 // k, 0, classes)
            row = classify(root, csv, *STATISTICAL, *PLAIN_RULE)
            row.update(classes=k, staged_evaluations_per_image=k * 50 + min(10, k) * 450)  # stage 2 reuses stage 1's 50
            rows.append(row)
        out["classes"] = rows
        plot_classes(rows, RESULTS / "compositional_classes.png")
    if out:
        write_result(OUT, out, __file__, argv, merge=True)
    if "cards" in args.configs:
        write_cards(json.loads(OUT.read_text()))
    if out:
        print(json.dumps(out, indent=1, default=str)[:6000])
    return out


if __name__ == "__main__":
    main()
