"""How to score a flow-matching model (SD3, Flux, fashion-flow): velocity or ε error space, the σ grid, learned
timestep weights; chosen on held-out train images, then confirmed on test images.

Every one of these choices is a timestep weighting of one full evaluation in velocity space:
  - error space: with x_t = (1-σ)x0 + σε and v = ε - x0, ε̂ = x_t + (1-σ)v̂ gives ε̂ - ε = (1-σ)(v̂ - v), so the
    ε-space l1 error at σ is the velocity error times (1-σ) (l2: (1-σ)²; FlowObjective.eps_error_weights);
  - σ grid: a grid shifted by s (σ' = sσ / (1 + (s-1)σ); SD3 trains and samples at s = 3) draws σ with density
    s / (s - (s-1)σ)² against evenly spaced σ, so its expected score is the even grid's, weighted by that density;
  - learned weights: fitted by cross-entropy (timestep_weights.fit_weights) on the velocity errors and on top of
    ε-space's (1-σ), cross-validated here (fitted on one half of the images and scored on the other, both ways).
fashion-flow trains and scores on evenly spaced σ (shift 1), so its full evaluation (velocity, l1, the 200 stratified
timesteps, `--error_space native`) answers every variant exactly for the full evaluation, and for the anytime rule
(--delta 0.05, the default rule, at most 200 timesteps) as an exact replay of the same records.

  run      the held-out full evaluation (PER_CLASS held-out train images of every class, the model's
           heldout_train.json; records under benchmarks/cache/fashion/flow_velocity_heldout), then report;
  confirm  the headline schedule of fashion_headline.py on its test images with `--error_space SPACE` (the space the
           flow default does not use; records under benchmarks/cache/headline/flow_test_<SPACE>), then report;
  report   benchmarks/results/flow_scoring.json: per variant, on the held-out images, the full evaluation's and the
           anytime rule's top-1 and evaluations per image, images gained and lost against velocity, NLL at the fitted
           temperature; and the test confirmation when both error spaces have test records.

    python benchmarks/flow_scoring.py run --per_class 20
    python benchmarks/flow_scoring.py confirm --error_space native
"""
from __future__ import annotations

import argparse
import dataclasses
import json

import torch

from lib import RESULTS, HelpFormatter
from lib.fashion import LOSS, MODELS, MODELS_DIR, log_dir, score_heldout_full, stratified_subset
from lib.headline import HEADLINE, run_folder, score
from lib.replay import DELTA, N_TIMESTEPS, cross_validated, evaluate
from lib.results import write_result
from lib.scoring import compare_runs

from diffusion_classifier.calibration import load_record_scores
from diffusion_classifier.objectives import FLOW_ERROR_DEFAULT, FlowObjective, flow_sigmas
from diffusion_classifier.records import read_manifest_settings
from diffusion_classifier.timestep_weights import load_full_errors

OUT = RESULTS / "flow_scoring.json"
SHIFTS = (3.0, 1 / 3)  # SD3's training shift; its mirror image, which samples low σ densely
HELD = log_dir("flow", "velocity_heldout")


def heldout_folder():
    """The held-out velocity-space full evaluation's run folder (None before any), checked to be one."""
    found = sorted((HELD / "fashion_mnist").glob("*")) if (HELD / "fashion_mnist").is_dir() else []
    if not found:
        return None
    settings = read_manifest_settings(found[0])
    if settings.get("error_space") != "native" or settings.get("min_samples") != N_TIMESTEPS:
        raise SystemExit(f"{found[0]}: expected a full evaluation in velocity space, its manifest says {settings}")
    return found[0]


def grid_density(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """Density of σ under the grid shifted by `shift`, against evenly spaced σ: s / (s - (s-1)σ)²."""
    return shift / (shift - (shift - 1) * sigmas) ** 2


def normalized(w: torch.Tensor) -> torch.Tensor:
    return w / w.mean()


def fixed_variants(sigmas: torch.Tensor) -> dict[str, torch.Tensor | None]:
    """name -> (T,) weights on velocity errors (None: plain velocity, uniform σ)."""
    eps = FlowObjective(sigmas).eps_error_weights(LOSS)
    out = {"velocity": None, "eps": normalized(eps)}
    for s in SHIFTS:
        d = grid_density(sigmas, s)
        out[f"velocity, grid shift {s:.3g}"] = normalized(d)
        out[f"eps, grid shift {s:.3g}"] = normalized(d * eps)
    return out


def report() -> None:
    folder = heldout_folder()
    if folder is None:
        print("no held-out full evaluation of fashion-flow yet: run `python benchmarks/flow_scoring.py run`")
        return
    fe = load_full_errors(folder)
    config = json.loads((MODELS_DIR / MODELS["flow"][1] / "scheduler" / "scheduler_config.json").read_text())
    sigmas = flow_sigmas(config)
    if float(config.get("shift", 1.0)) != 1.0 or config.get("use_dynamic_shifting"):
        raise SystemExit("fashion-flow's grid is not evenly spaced σ: the grid variants need a shift-1 model")
    everything = range(len(fe.labels))
    base_row, base_right = evaluate(fe, None, everything)
    rows = {}
    for name, w in fixed_variants(sigmas).items():
        row, right = (base_row, base_right) if w is None else evaluate(fe, w, everything)
        rows[name] = {**row, "gained_vs_velocity": int((right & ~base_right).sum()),
                      "lost_vs_velocity": int((~right & base_right).sum()),
                      "weights_every_100": None if w is None else [round(float(v), 4) for v in w[::100]]}
    fe_eps = dataclasses.replace(fe, errors=fe.errors * FlowObjective(sigmas).eps_error_weights(LOSS)[fe.t.long()])
    for start, errors in (("", fe), ("eps + ", fe_eps)):  # learned on velocity errors, and on top of ε-space's (1-σ)
        for kind in ("poly", "bins"):
            row, right = cross_validated(errors, kind)
            rows[f"{start}fitted {kind} (2-fold cross-validated)"] = {
                **row, "gained_vs_velocity": int((right & ~base_right).sum()),
                "lost_vs_velocity": int((~right & base_right).sum())}
    out = {"model": MODELS["flow"][1], "heldout_folder": folder.name, "heldout_images": len(fe.labels),
           "loss": LOSS, "flow_default_error_space": FLOW_ERROR_DEFAULT, "variants": rows}
    print(f"fashion-flow, {len(fe.labels)} held-out train images, full evaluation ({N_TIMESTEPS} timesteps, {LOSS}); "
          f"anytime: --delta {DELTA:g} replayed on the same records")
    print(f"{'variant':44s} {'full':>7s} {'gain':>5s} {'lost':>5s} {'NLL':>7s} {'anytime':>8s} {'evals':>6s}")
    for name, r in rows.items():
        print(f"{name:44s} {r['full_top1']:6.1f}% {r['gained_vs_velocity']:5d} {r['lost_vs_velocity']:5d} "
              f"{r.get('full_nll', float('nan')):7.4f} {r.get('anytime_top1', float('nan')):7.1f}% "
              f"{r.get('anytime_evals_per_image', float('nan')):6.0f}")
    test = confirmation()
    if test:
        out["test_confirmation"] = test
        for space, r in test["spaces"].items():
            print(f"test, headline schedule, --error_space {space}: {r['top1']:.2f}% at "
                  f"{r['evaluations_per_image']:.0f} evaluations / image ({test['images']} images)")
        print(f"  eps against native: {test['eps_gained']} gained, {test['eps_lost']} lost")
    write_result(OUT, out, "benchmarks/flow_scoring.py")
    print(f"wrote {OUT}")


def confirmation() -> dict | None:
    """Both error spaces at the headline schedule on the same test images (the default's records and the other's)."""
    other = "native" if FLOW_ERROR_DEFAULT == "eps" else "eps"
    default_folder, other_folder = run_folder("flow", "test"), run_folder("flow", f"test_{other}")
    if default_folder is None or other_folder is None:
        return None
    found = {FLOW_ERROR_DEFAULT: load_record_scores(default_folder), other: load_record_scores(other_folder)}
    c = compare_runs(("native", found["native"]), ("eps", found["eps"]))
    return {"images": c["images"], "spaces": {space: c[space] for space in found}, "eps_gained": c["gained"],
            "eps_lost": c["lost"], "mcnemar_p": c["mcnemar_p"]}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("action", choices=["run", "confirm", "report"])
    p.add_argument("--per_class", type=int, default=20, help="run: held-out train images per class")
    p.add_argument("--test_per_class", type=int, default=100, help="confirm: test images per class (the headline's)")
    p.add_argument("--error_space", choices=["native", "eps"], default=None,
                   help="confirm: the error space to score (default: the one the flow default does not use)")
    p.add_argument("--seed", type=int, default=0, help="noise seed of the runs")
    args = p.parse_args(argv)
    if args.action == "run":
        score_heldout_full("flow", args.per_class, args.seed, HELD, ["--error_space", "native"])
    elif args.action == "confirm":
        space = args.error_space or ("native" if FLOW_ERROR_DEFAULT == "eps" else "eps")
        score("flow", f"test_{space}", HEADLINE + ["--error_space", space], "test",
              stratified_subset(args.test_per_class), args.seed)
    report()


if __name__ == "__main__":
    main()
