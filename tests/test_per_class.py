"""eval_prob_dit and print_dit_acc end to end on the tiny DiT fixture, against direct transformer calls."""
from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import eval_prob_dit  # noqa: E402
from conftest import load_script  # noqa: E402
from diffusion_classifier.schedules.staged import interval_timesteps  # noqa: E402
from diffusion_classifier.data.digits import DigitsDataset  # noqa: E402
from diffusion_classifier.data.transforms import dit_transform  # noqa: E402
from diffusion_classifier.tasks.per_class import (  # noqa: E402
    per_class_jobs,
    schedule_from_alphas_cumprod,
)
from diffusion_classifier.errors import InputError  # noqa: E402
from diffusion_classifier.noise import make_noise, periodic_noise_rows  # noqa: E402
from diffusion_classifier.records import load_record, save_record  # noqa: E402
from diffusion_classifier.vb import linear_betas, vb_terms  # noqa: E402

SEED = 7
T_INTERVAL = 100  # timesteps 50, 150, ..., 950
N_T = 10


def run(tiny_dit, log_dir, *flags) -> dict:
    return eval_prob_dit.main(["--model", str(tiny_dit), "--dataset", "digits", "--log_dir", str(log_dir),
                               "--seed", str(SEED), "--t_interval", str(T_INTERVAL), "--no_progress", *map(str, flags)])


@pytest.fixture(scope="module")
def transformer(tiny_dit):
    from diffusers import DiTTransformer2DModel

    return DiTTransformer2DModel.from_pretrained(tiny_dit / "transformer").eval()


@pytest.fixture(scope="module")
def digits():
    return DigitsDataset("test", transform=dit_transform(8))


def direct_output(transformer, x0, t, cls, eps):
    """The transformer called on one noised image, outside the engine: (2C, H, W)."""
    ac = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)[t]
    x_t = math.sqrt(ac) * x0 + math.sqrt(1 - ac) * eps
    with torch.no_grad():
        out = transformer(x_t[None].float(), timestep=torch.tensor([t]), class_labels=torch.tensor([cls])).sample[0]
    return x_t, out


@pytest.mark.parametrize("flag,kind,tail", [
    (None, "l2", ()),
    ("--save_vb", "vb", (4,)),
    ("--spatial", "spatial", (8, 8)),
    ("--save_eps", "eps", (3, 8, 8)),
    ("--save_eps_and_var", "eps_and_var", (6, 8, 8)),
])
def test_per_class_records_match_direct_computation(tiny_dit, transformer, digits, tmp_path, flag, kind, tail):
    n_trials, batch, cls, idx = 2, 8, 4, 1
    res = run(tiny_dit, tmp_path, "--cls", cls, "--imgs_to_eval", 2, "--n_trials", n_trials, "--batch_size", batch,
              *([flag] if flag else []))
    folder = Path(res["class_folder"])
    assert sorted(p.name for p in folder.glob("*.pt")) == ["000.pt", "001.pt"]
    rec = load_record(folder / "001.pt")
    assert rec["kind"] == kind and rec["cls"] == cls and rec["label"] == digits[idx][1]
    assert tuple(rec["data"].shape) == (N_T, n_trials, *tail)
    assert rec["t"].tolist() == list(range(50, 1000, 100))

    x0 = digits[idx][0]
    noise = make_noise(batch, (3, 8, 8), SEED)
    for ti, trial in [(0, 0), (3, 1), (9, 1)]:
        pos = ti * n_trials + trial  # position among the image's jobs; its batch reuses rows 0..batch-1
        t, eps = 50 + 100 * ti, noise[pos % batch]
        x_t, out = direct_output(transformer, x0, t, cls, eps)
        got = rec["data"][ti, trial]
        if kind == "l2":
            expected = ((out[:3] - eps) ** 2).mean()
        elif kind == "spatial":
            expected = ((out[:3] - eps) ** 2).mean(0)
        elif kind == "eps":
            expected = out[:3]
        elif kind == "eps_and_var":
            expected = out
        else:
            # KL of the improved-DDPM learned-range variance, written out here from its formula
            betas = linear_betas().double()
            ac = torch.cumprod(1 - betas, 0)
            ac_prev = ac[t - 1]
            post_var = betas[t] * (1 - ac_prev) / (1 - ac[t])
            lv_post = math.log(post_var)
            eps_hat, v = out[:3].double(), out[3:].double()
            frac = (v + 1) / 2
            lv_model = frac * math.log(betas[t]) + (1 - frac) * lv_post
            x0_hat = x_t.double() / math.sqrt(ac[t]) - math.sqrt(1 / ac[t] - 1) * eps_hat
            c1 = betas[t] * math.sqrt(ac_prev) / (1 - ac[t])
            c2 = (1 - ac_prev) * math.sqrt(1 - betas[t]) / (1 - ac[t])
            mu_model, mu_true = c1 * x0_hat + c2 * x_t.double(), c1 * x0.double() + c2 * x_t.double()
            kl = 0.5 * (-1 + lv_model - lv_post + torch.exp(lv_post - lv_model) + (mu_true - mu_model) ** 2 * torch.exp(-lv_model))
            diff = eps_hat - eps.double()
            nll = vb_terms(schedule_from_alphas_cumprod(ac), x0[None], x_t[None], torch.tensor([t]), eps[None],
                           out[None, :3], out[None, 3:])["nll"][0]
            expected = torch.stack([(diff**2).mean(), diff.abs().mean(), kl.mean() / math.log(2), nll])
        torch.testing.assert_close(got.double(), expected.double(), rtol=1e-4, atol=1e-5)


def test_two_save_flags_raise(tiny_dit, tmp_path):
    with pytest.raises(ValueError, match="at most one of .*--spatial.*--save_vb"):
        run(tiny_dit, tmp_path, "--cls", 0, "--spatial", "--save_vb")


def test_flag_errors(tiny_dit, tmp_path):
    with pytest.raises(ValueError, match="pass --cls C"):
        run(tiny_dit, tmp_path)
    with pytest.raises(ValueError, match="--cls must be in 0..9"):
        run(tiny_dit, tmp_path, "--cls", 10, "--imgs_to_eval", 1)
    with pytest.raises(ValueError, match="--cls is per-class mode"):
        run(tiny_dit, tmp_path, "--cls", 1, "--to_keep", 1, "--n_samples", 5)
    with pytest.raises(ValueError, match="needs both --to_keep and --n_samples"):
        run(tiny_dit, tmp_path, "--to_keep", 1)


def test_resume_skips_existing_and_manifest_guards(tiny_dit, tmp_path):
    first = run(tiny_dit, tmp_path, "--cls", 2, "--imgs_to_eval", 2)
    folder = Path(first["class_folder"])
    stamps = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.pt")}
    second = run(tiny_dit, tmp_path, "--cls", 2, "--imgs_to_eval", 3)
    assert (first["done"], second["done"], second["skipped"]) == (2, 1, 2)
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("*.pt") if p.name in stamps} == stamps
    assert len(list(folder.glob("*.pt"))) == 3
    with pytest.raises(ValueError, match="other settings.*batch_size"):
        run(tiny_dit, tmp_path, "--cls", 2, "--imgs_to_eval", 3, "--batch_size", 4)


def test_noise_row_rule():
    assert periodic_noise_rows(7, 3, randomize_noise=False).tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert periodic_noise_rows(7, 3, randomize_noise=True).tolist() == list(range(7))
    jobs = per_class_jobs(2, [5, 15], n_trials=2, batch_size=3, randomize_noise=False)
    assert jobs.t.tolist() == [5, 5, 15, 15] * 2
    assert jobs.noise.tolist() == [0, 1, 2, 0] * 2  # per image, counted from its first job
    assert jobs.image.tolist() == [0] * 4 + [1] * 4
    assert interval_timesteps(4) == list(range(2, 1000, 4)) and len(interval_timesteps(4)) == 250


def test_randomize_noise_changes_only_rows_past_the_first_batch(tiny_dit, tmp_path):
    a = run(tiny_dit, tmp_path, "--cls", 5, "--imgs_to_eval", 1, "--batch_size", 4)
    b = run(tiny_dit, tmp_path, "--cls", 5, "--imgs_to_eval", 1, "--batch_size", 4, "--randomize_noise")
    assert a["folder"] != b["folder"]
    ea = load_record(Path(a["class_folder"]) / "000.pt")["data"][:, 0]
    eb = load_record(Path(b["class_folder"]) / "000.pt")["data"][:, 0]
    torch.testing.assert_close(ea[:4], eb[:4])  # both use rows 0..3 in the first batch
    assert (ea[4:] - eb[4:]).abs().min() > 0  # later jobs: rows 0..3 again vs rows 4..9


def write_vb_record(path, mean4, label):
    """A --save_vb record [n_t=2, 1, 4] whose mean over t is mean4."""
    m = torch.tensor(mean4, dtype=torch.float64)
    data = torch.stack([m - 0.2, m + 0.2])[:, None, :]
    save_record({"kind": "vb", "data": data, "t": torch.tensor([10, 20]), "cls": int(Path(path).parent.name),
                 "label": label}, path)


def test_print_dit_acc_on_crafted_records(tmp_path, capsys):
    # (mse, l1, vb, nll) per image per class; L2 and VLB disagree on images 0 and 1
    table = {
        0: (0, [(1.0, 0.1, 0.5, 0), (2.0, 0.5, 0.1, 0), (3.0, 0.5, 0.9, 0)]),  # L2 ok, VLB wrong, L1 ok, sum ok
        1: (1, [(1.0, 0.5, 0.9, 0), (1.5, 0.1, 0.1, 0), (2.0, 0.5, 0.5, 0)]),  # L2 wrong, VLB ok, L1 ok, sum ok
        2: (2, [(2.0, 0.1, 0.9, 0), (2.0, 0.5, 0.9, 0), (1.0, 0.5, 0.1, 0)]),  # L2 ok, VLB ok, L1 wrong, sum ok
        3: (0, [(2.0, 0.1, 0.1, 0), (1.0, 0.5, 0.5, 0), (3.0, 0.5, 0.9, 0)]),  # L2 wrong, VLB ok, L1 ok, sum wrong
    }
    for idx, (label, rows) in table.items():
        for cls, row in enumerate(rows):
            write_vb_record(tmp_path / str(cls) / f"{idx}.pt", row, label)
    write_vb_record(tmp_path / "0" / "4.pt", (0, 0, 0, 0), 0)  # only class 0 has image 4: not counted
    out = load_script("scripts/print_dit_acc.py").main([str(tmp_path), "--dataset", "digits"])
    assert (out["n_images"], out["n_classes"]) == (4, 3)
    assert out["accuracy"] == {"L2": 50.0, "L1": 75.0, "VLB": 75.0, "L2+VLB": 75.0}
    assert "4 images scored by all 3 classes" in capsys.readouterr().out


def test_print_dit_acc_bare_l2_tensors_take_labels_from_the_dataset(tmp_path, digits):
    labels = [digits.targets[i] for i in range(3)]
    for cls in range(10):
        for idx in range(3):
            err = torch.full((4, 1), 1.0 if cls == labels[idx] or idx == 2 and cls == 0 else 2.0)
            save_record(err, tmp_path / str(cls) / f"{idx}.pt")
    out = load_script("scripts/print_dit_acc.py").main([str(tmp_path), "--dataset", "digits"])
    expected = 100.0 * (2 + int(labels[2] == 0)) / 3  # image 2 ties with class 0, which wins argmin
    assert out["accuracy"] == {"L2": pytest.approx(expected)}


def test_print_dit_acc_refuses_records_of_another_class_run_or_image(tmp_path):
    """A record in the wrong class folder, or of another image, would silently change the scores: refused."""
    script = load_script("scripts/print_dit_acc.py")
    for cls in range(3):
        for idx in range(2):
            write_vb_record(tmp_path / str(cls) / f"{idx}.pt", (1.0 + (cls != idx), 0, 0, 0), idx)
    assert script.main([str(tmp_path), "--dataset", "digits"])["accuracy"]["L2"] == 100.0
    good = (tmp_path / "1" / "0.pt").read_bytes()
    (tmp_path / "1" / "0.pt").write_bytes((tmp_path / "0" / "0.pt").read_bytes())  # class 0's record in class 1's folder
    with pytest.raises(ValueError, match=r"1/0\.pt: 1 is the folder of class 1 but the record is of class 0"):
        script.main([str(tmp_path), "--dataset", "digits"])
    (tmp_path / "1" / "0.pt").write_bytes(good)
    write_vb_record(tmp_path / "2" / "1.pt", (1.0, 0, 0, 0), 7)  # image 1's record, with another image's label
    with pytest.raises(ValueError, match=r"2/1\.pt gives image 1 label 7, .*0/1\.pt label 1: one of them is a record "
                                         r"of another run or image"):
        script.main([str(tmp_path), "--dataset", "digits"])


def test_print_dit_acc_refuses_bare_records_beyond_the_dataset(tmp_path):
    for cls in range(2):
        for idx in (3, 400):  # digits' test split has 359 images
            save_record(torch.ones(4, 1), tmp_path / str(cls) / f"{idx}.pt")
    with pytest.raises(ValueError, match=r"records of image 400 carry no label and --dataset digits --split test has "
                                         r"359 images"):
        load_script("scripts/print_dit_acc.py").main([str(tmp_path), "--dataset", "digits"])


def test_adaptive_without_pruning_equals_per_class_evaluation(tiny_dit, tmp_path):
    n_img = 3
    for cls in range(10):
        run(tiny_dit, tmp_path, "--cls", cls, "--imgs_to_eval", n_img, "--randomize_noise", "--batch_size", 16)
    per_class = tmp_path / "digits" / f"{tiny_dit.name}_{T_INTERVAL}int_1trials_randnoise"
    res = run(tiny_dit, tmp_path, "--to_keep", 1, "--n_samples", N_T, "--imgs_to_eval", n_img, "--batch_size", 16)
    assert res["evaluations"] == n_img * 10 * N_T
    for idx in range(n_img):
        rec = load_record(Path(res["folder"]) / f"{idx:03d}.pt")
        full = torch.stack([load_record(per_class / str(c) / f"{idx:03d}.pt")["data"][:, 0] for c in range(10)])
        for c in range(10):
            assert rec["errors"][c]["t"].tolist() == list(range(50, 1000, 100))
            torch.testing.assert_close(rec["errors"][c]["pred_errors"], full[c], rtol=1e-5, atol=1e-6)
        assert rec["pred"] == int(full.double().mean(1).argmin())
    acc = load_script("scripts/print_dit_acc.py").main([str(per_class), "--dataset", "digits"])["accuracy"]["L2"]
    assert acc == pytest.approx(res["accuracy"])
    summary = load_script("scripts/print_acc.py").main([res["folder"], "--no_table"])[0]  # the SD path's reader
    assert (summary["n"], summary["top1"]) == (n_img, pytest.approx(res["accuracy"]))


def test_a_v_prediction_dit_is_scored_with_its_objective_in_both_modes(tiny_dit, tmp_path):
    """A DiTPipeline folder whose scheduler says v_prediction: both modes compare its output as v (errors in ε-space),
    not as ε, and agree with each other; --save_vb, which needs ε outputs, is refused in one line."""
    import json
    import shutil

    v_dit = tmp_path / "v_dit"
    shutil.copytree(tiny_dit, v_dit)
    config_path = v_dit / "scheduler" / "scheduler_config.json"
    config = json.loads(config_path.read_text())
    config["prediction_type"] = "v_prediction"
    config_path.write_text(json.dumps(config))
    flags = ("--to_keep", 1, "--n_samples", N_T, "--imgs_to_eval", 1, "--batch_size", 16)
    eps_rec = load_record(Path(run(tiny_dit, tmp_path / "eps", *flags)["folder"]) / "000.pt")
    v_rec = load_record(Path(run(v_dit, tmp_path / "v", *flags)["folder"]) / "000.pt")
    assert not torch.allclose(v_rec["errors"][0]["pred_errors"], eps_rec["errors"][0]["pred_errors"])
    run(v_dit, tmp_path / "v", "--cls", 0, "--imgs_to_eval", 1, "--batch_size", 16, "--randomize_noise")
    per_class = next(f for f in (tmp_path / "v" / "digits").iterdir() if f.name.endswith("randnoise"))
    torch.testing.assert_close(v_rec["errors"][0]["pred_errors"],
                               load_record(per_class / "0" / "000.pt")["data"][:, 0], rtol=1e-5, atol=1e-6)
    with pytest.raises(InputError, match="--save_vb needs an epsilon-prediction model .* 'v_prediction'"):
        run(v_dit, tmp_path / "v", "--cls", 0, "--imgs_to_eval", 1, "--save_vb")


def test_null_normalize_keeps_predictions_and_subtracts_a_shared_term(tiny_dit, tmp_path):
    flags = ("--to_keep", 3, 1, "--n_samples", 5, 10, "--imgs_to_eval", 2)
    raw = run(tiny_dit, tmp_path, *flags)
    norm = run(tiny_dit, tmp_path, *flags, "--null_normalize")
    assert norm["folder"].endswith("_null") and raw["evaluations"] == 2 * (10 * 5 + 3 * 5)
    assert norm["evaluations"] == raw["evaluations"] + 2 * 10  # one null evaluation per (t, ε)
    for idx in range(2):
        r = load_record(Path(raw["folder"]) / f"00{idx}.pt")
        n = load_record(Path(norm["folder"]) / f"00{idx}.pt")
        assert r["pred"] == n["pred"] and sorted(r["errors"]) == sorted(n["errors"])
        best = r["pred"]  # evaluated on every (t, ε) of the schedule
        shift = r["errors"][best]["pred_errors"] - n["errors"][best]["pred_errors"]  # the null error per (t, ε)
        assert len(shift) == 10
        assert shift.abs().min() > 0
        for c in r["errors"]:
            k = len(r["errors"][c]["pred_errors"])
            torch.testing.assert_close(r["errors"][c]["pred_errors"] - n["errors"][c]["pred_errors"], shift[:k])


def test_statistical_schedule_runs_with_fewer_evaluations(tiny_dit, tmp_path):
    res = run(tiny_dit, tmp_path, "--to_keep", 1, "--n_samples", 20, "--schedule", "statistical",
              "--min_samples", 5, "--z", 1, "--imgs_to_eval", 2)
    assert "stat_z1_min5" in res["folder"]
    rec = load_record(Path(res["folder"]) / "000.pt")
    n_per_class = {c: len(e["pred_errors"]) for c, e in rec["errors"].items()}
    assert min(n_per_class.values()) >= 5 and n_per_class[rec["pred"]] == max(n_per_class.values())
    assert res["evaluations"] <= 2 * 10 * 20


def test_schedule_from_alphas_cumprod_recovers_betas():
    betas = linear_betas()
    sched = schedule_from_alphas_cumprod(torch.cumprod(1 - betas, 0))
    torch.testing.assert_close(sched.betas, betas, rtol=1e-9, atol=1e-12)


def test_save_vb_needs_learned_variance(tmp_path):
    import json

    from diffusers import DiTTransformer2DModel

    from conftest import write_scheduler

    torch.manual_seed(0)
    DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=3, out_channels=3, num_layers=1,
                          sample_size=8, patch_size=2, num_embeds_ada_norm=10).save_pretrained(tmp_path / "m" / "transformer")
    write_scheduler(tmp_path / "m", "linear", 1e-4, 0.02)
    (tmp_path / "m" / "model_index.json").write_text(json.dumps(
        {"_class_name": "DiTPipeline", "transformer": ["diffusers", "DiTTransformer2DModel"],
         "scheduler": ["diffusers", "DDPMScheduler"], "vae": [None, None]}))
    with pytest.raises(ValueError, match="--save_vb needs a learned-variance model"):
        run(tmp_path / "m", tmp_path, "--cls", 0, "--save_vb", "--imgs_to_eval", 1)


def test_dataset_label_mapping_for_imagenet_a_and_objectnet():
    from diffusion_classifier.data.datasets import imagenet_a_indices
    from diffusion_classifier.data.registry import candidate_classes, class_to_label
    from diffusion_classifier.tasks.per_class import per_class_accuracy

    classes, labels = candidate_classes("imagenetA", 200, 1000)
    assert classes == imagenet_a_indices() and labels == list(range(200))
    obj_classes, obj_labels = candidate_classes("objectnet", 113, 1000)
    assert len(set(obj_labels)) == 113 and len(obj_classes) == len(set(obj_classes)) >= 113
    with pytest.raises(ValueError, match="model has 10 classes"):
        candidate_classes("imagenetA", 200, 10)
    assert class_to_label("digits") is None
    # two images of ImageNet-A label 0 and 1; the second's winner is a class outside ImageNet-A: wrong
    a0, a1 = imagenet_a_indices()[:2]
    outside = next(c for c in range(1000) if c not in set(imagenet_a_indices()))
    scores = {"L2": torch.tensor([[0.1, 0.5, 0.9], [0.5, 0.9, 0.1]], dtype=torch.float64)}
    acc = per_class_accuracy(scores, [a0, a1, outside], [0, 1], class_to_label("imagenetA"))
    assert acc == {"L2": 50.0}


def test_print_dit_acc_rejects_records_without_errors(tmp_path):
    save_record({"kind": "eps", "data": torch.zeros(2, 1, 3, 8, 8), "t": torch.tensor([1, 2]), "cls": 0, "label": 0},
                tmp_path / "0" / "0.pt")
    with pytest.raises(ValueError, match="kind 'eps' hold no errors"):
        load_script("scripts/print_dit_acc.py").main([str(tmp_path), "--dataset", "digits"])


@pytest.mark.skipif(not (ROOT / "diffusion_classifier" / "tiny_models" / "digits-dit" / "model_index.json").is_file(),
                    reason="the shipped digits DiT is not built yet")
def test_shipped_tiny_model_runs_at_its_native_size(tmp_path):
    import json

    res = eval_prob_dit.main(["--model", "tiny", "--dataset", "digits", "--log_dir", str(tmp_path), "--cls", "3",
                              "--imgs_to_eval", "1", "--t_interval", "250", "--save_vb", "--no_progress"])
    assert Path(res["folder"]).name == "digits-dit_250int_1trials_vb"
    assert json.loads((Path(res["folder"]) / "manifest.json").read_text())["settings"]["img_size"] == 8
    rec = load_record(Path(res["class_folder"]) / "000.pt")
    assert tuple(rec["data"].shape) == (4, 1, 4) and bool((rec["data"][..., 2] >= 0).all())  # KL >= 0


def test_another_image_folder_never_resumes_the_records_of_the_first(tiny_dit, tmp_path):
    """Records are by index, per class folder and adaptive: a second image folder under the same --log_dir is refused."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        for c in ("0", "1"):  # class indices of the model
            (tmp_path / name / c).mkdir(parents=True)
            for j in range(2):  # the same file names, other pixels
                Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(tmp_path / name / c / f"{j}.png")

    def main(root, *flags):
        return eval_prob_dit.main(["--model", str(tiny_dit), "--dataset", "imagefolder", "--dataset_root",
                                   str(tmp_path / root), "--log_dir", str(tmp_path / "logs"), "--no_progress",
                                   *map(str, flags)])

    for flags in (("--cls", 1, "--t_interval", 250), ("--to_keep", 1, "--n_samples", 2)):
        assert main("a", *flags)["done"] == 4
        with pytest.raises(ValueError, match=r"holds records of other images \(image list [0-9a-f]+; the dataset"):
            main("b", *flags)
        again = main("a", *flags)
        assert again["done"] == 0 and again["skipped"] == 4


def test_image_folder_classes_are_matched_to_the_model_classes_they_name(tmp_path, capsys):
    """Folders named by the shipped digits DiT's labels ('seven', 'three', ...), by class index or by nothing it knows:
    a folder of some classes is scored against those classes, each image under its own label, in both modes."""
    from PIL import Image
    from sklearn.datasets import load_digits

    import json

    from diffusion_classifier.data.registry import match_model_classes

    print_dit_acc = load_script("scripts/print_dit_acc.py")

    d = load_digits()
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    for root, folder_of in (("named", lambda c: names[c]), ("indexed", str), ("unknown", lambda c: f"kind{c}")):
        for c in (3, 5, 7):
            (tmp_path / root / folder_of(c)).mkdir(parents=True)
            for j in np.flatnonzero(d.target == c)[-4:]:  # digits the shipped model was not trained on
                Image.fromarray((d.images[j] * 255 / 16).astype(np.uint8)).save(tmp_path / root / folder_of(c) / f"{j}.png")

    def main(root, *flags):
        return eval_prob_dit.main(["--model", "tiny", "--dataset", "imagefolder", "--dataset_root", str(tmp_path / root),
                                   "--log_dir", str(tmp_path / "logs" / root), "--no_progress", *map(str, flags)])

    for root in ("named", "indexed"):  # sorted folders: five, seven, three / 3, 5, 7
        res = main(root, "--to_keep", 1, "--n_samples", 10)
        manifest = json.loads((Path(res["folder"]) / "manifest.json").read_text())["settings"]
        assert manifest["classes"] == ([5, 7, 3] if root == "named" else [3, 5, 7])
        assert res["accuracy"] >= 75.0, (root, res)  # 10% when label k was scored as model class k
        for cls in (3, 5, 7):
            per_class = main(root, "--cls", cls, "--t_interval", 100)
            if cls == 3:  # a partial run says which classes it lacks
                capsys.readouterr()
                print_dit_acc.main([per_class["folder"]])
                assert "2 of the 3 classes of --dataset imagefolder have no class folder yet (5, 7)" in \
                    capsys.readouterr().err
        settings = json.loads((Path(per_class["folder"]) / "manifest.json").read_text())["settings"]
        assert settings["model_classes"] == manifest["classes"]
        acc = print_dit_acc.main([per_class["folder"], "--dataset", "imagefolder"])["accuracy"]["L2"]
        assert acc >= 75.0, (root, acc)
    with pytest.raises(ValueError, match=r"the 3 classes of --dataset imagefolder \('kind3', 'kind5', 'kind7'\) do "
                                         r"not name classes of this 10-class model.*such as 'zero'"):
        main("unknown", "--to_keep", 1, "--n_samples", 10)
    # label synonyms, case and punctuation; wnids of a 1,000-class model; a name two classes share is no match
    assert match_model_classes(["Great White Shark", "tench"], 3, {0: "tench, Tinca tinca", 1: "crane",
                                                                   2: "great white shark, white shark"}) == [2, 0]
    assert match_model_classes(["crane"], 3, {0: "crane", 1: "crane", 2: "x"}) is None
    assert match_model_classes(["n01440764", "n01443537"], 1000, None) == [0, 1]
    assert match_model_classes(["2", "10"], 10, None) is None
