"""Run descriptions: the folder names of existing runs stay as they were; name and manifest come from one object."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from diffusion_classifier.objectives import DDPMObjective, FlowObjective
from diffusion_classifier.runs import (
    RunDescription,
    Setting,
    class_adaptive_run,
    per_class_run,
    winoground_run,
    zero_shot_run,
)

EPS = DDPMObjective(torch.linspace(0.99, 0.01, 1000, dtype=torch.float64))
V = DDPMObjective(torch.linspace(0.99, 0.01, 1000, dtype=torch.float64), "v_prediction")
FLOW = FlowObjective(torch.linspace(0.001, 1, 1000, dtype=torch.float64))
PROMPTS = [["a photo of a cat.", 0], ["a photo of a dog.", 1]]


def sd(**changes):
    """zero_shot_run at eval_prob_adaptive.py's defaults (the reference's), with `changes`."""
    kw = dict(version="2-0", model=None, source="stabilityai/stable-diffusion-2-base", dataset="pets", split="train",
              img_size=512, n_trials=1, to_keep=[5, 1], n_samples=[50, 500], loss="l2", interpolation="bicubic",
              noise="seed 0", prompts=PROMPTS, subset=None, corruption=None, severity=None, schedule="reference", z=3.0,
              min_samples=10, delta=None, variance="iid", timestep_weights=None, objective=EPS, error_space=None,
              flow_grid="timesteps", no_t5=False, guidance=None, extra=None)
    return zero_shot_run(**{**kw, **changes})


def dit(per_class: bool, **changes):
    kw = dict(source="facebook/DiT-XL-2-256", vae=None, dataset="imagenet", split="test", img_size=256, n_trials=1,
              noise="seed 0", corruption=None, severity=None, extra=None)
    if per_class:
        kw.update(t_interval=5, kind="l2", randomize_noise=False, batch_size=32)
        return per_class_run(**{**kw, **changes})
    kw.update(to_keep=[50, 10, 1], n_samples=[20, 50, 200], loss="l2", schedule="reference", z=3.0, min_samples=10,
              delta=None, variance="iid", null_normalize=False, classes=list(range(1000)), timestep_weights=None)
    return class_adaptive_run(**{**kw, **changes})


FOLDERS = [  # (description, LOG_DIR-relative folder as the scripts have always named it)
    (sd(), "pets/v2-0_1trials_5_1keep_50_500samples"),
    (sd(dataset="cifar10", split="test", loss="l1"), "cifar10/v2-0_1trials_5_1keep_50_500samples_l1"),
    (sd(version="tiny", img_size=8, dataset="digits", n_samples=[10, 50]), "digits/vtiny_1trials_5_1keep_10_50samples_8"),
    (sd(model="/models/my-sd/", interpolation="bilinear", loss="huber", img_size=256, n_trials=2, extra="run2"),
     "pets_run2/vmy-sd_2trials_5_1keep_50_500samples_bilinear_huber_256"),
    (sd(model="org/some-model", schedule="statistical", z=2.0, to_keep=[1], n_samples=[200]),
     "pets/vsome-model_1trials_1keep_200samples_stat_z2_min10"),
    (sd(version="tiny", img_size=8, dataset="digits_c", corruption="fog", severity=2, schedule="statistical",
        delta=0.05, min_samples=4, variance="stratified", timestep_weights="0123abcd", to_keep=[1], n_samples=[8]),
     "digits_c_fog_2/vtiny_1trials_1keep_8samples_8_stat_d0.05_min4_stratified_tw0123abcd"),
    (sd(variance="stratified"), "pets/v2-0_1trials_5_1keep_50_500samples"),  # the variance names statistical runs only
    (sd(version="fashion", img_size=28, dataset="fashion_mnist", split="test", loss="l1", schedule="statistical",
        delta=0.05, variance="stratified", spending="decaying", epsilon=0.005, to_keep=[1], n_samples=[200]),
     "fashion_mnist/vfashion_1trials_1keep_200samples_l1_28_stat_d0.05_min10_stratified_decay_eps0.005"),
    (sd(spending="decaying", epsilon=0.01), "pets/v2-0_1trials_5_1keep_50_500samples"),  # statistical runs only
    (sd(version="2-1-768", img_size=768, objective=V), "pets/v2-1-768_1trials_5_1keep_50_500samples_768"),
    (sd(version="2-1-768", img_size=768, objective=V, error_space="native"),
     "pets/v2-1-768_1trials_5_1keep_50_500samples_768_errnative"),
    (sd(version="3-5-medium", img_size=1024, objective=FLOW, error_space="eps", flow_grid="uniform_sigma", no_t5=True),
     "pets/v3-5-medium_1trials_5_1keep_50_500samples_1024_erreps_griduniform_sigma_not5"),
    (sd(version="flux-dev", img_size=1024, objective=FLOW, guidance=3.5), "pets/vflux-dev_1trials_5_1keep_50_500samples_1024_g3.5"),
    (sd(flow_grid="uniform_sigma"), "pets/v2-0_1trials_5_1keep_50_500samples"),  # a grid names flow runs only
    (dit(True), "imagenet/DiT-XL-2-256_5int_1trials"),
    (dit(True, t_interval=4, randomize_noise=True, kind="vb", extra="dit256"), "imagenet_dit256/DiT-XL-2-256_4int_1trials_randnoise_vb"),
    (dit(True, source="/x/digits-dit", n_trials=2, kind="eps_and_var", dataset="digits"), "digits/digits-dit_5int_2trials_eps_and_var"),
    (dit(False), "imagenet/DiT-XL-2-256_1trials_50_10_1keep_20_50_200samples"),
    (dit(False, source="/x/digits-dit/", dataset="digits", to_keep=[1], n_samples=[8], loss="huber",
         schedule="statistical", delta=0.1, min_samples=4, null_normalize=True, variance="stratified",
         timestep_weights="ffee"), "digits/digits-dit_1trials_1keep_8samples_huber_stat_d0.1_min4_null_stratified_twffee"),
    (dit(False, schedule="statistical", z=2.5, null_normalize=True, dataset="digits_c", corruption="contrast", severity=3),
     "digits_c_contrast_3/DiT-XL-2-256_1trials_50_10_1keep_20_50_200samples_stat_z2.5_min10_null"),
    (winoground_run(model="sd", version="tiny", model_path=None, source="/x/digits-sd", img_size=8, native_size=8,
                    t_interval=20), "winoground/sd_vtiny_t20_1trials"),
    (winoground_run(model="sd", version="2-0", model_path="/models/sd21/", source="/models/sd21/", extra="x", img_size=512,
                    native_size=768, interpolation="bicubic", t_interval=1, randomize_noise=True),
     "winoground_x/sd_vsd21_t1_1trials_randnoise_bicubic_512"),
    (winoground_run(model="clip", version="ViT-L/14", model_path=None, source="openai/clip-vit-large-patch14"),
     "winoground/clip_ViT-L_14"),
    (winoground_run(model="openclip", version="ViT-H-14", model_path="/ckpt/open_clip.bin", source="/ckpt/open_clip.bin"),
     "winoground/openclip_open_clip.bin"),
]


@pytest.mark.parametrize("run, folder", FOLDERS, ids=[f for _, f in FOLDERS])
def test_folder_names_of_existing_runs_are_kept(run, folder, tmp_path):
    assert run.folder(tmp_path) == tmp_path / folder
    assert f"{run.group}/{run.name}" == folder


def test_manifest_holds_the_settings_the_scripts_have_always_written():
    base = {"model": "stabilityai/stable-diffusion-2-base", "dataset": "pets", "split": "train", "img_size": 512,
            "n_trials": 1, "to_keep": [5, 1], "n_samples": [50, 500], "loss": "l2", "interpolation": "bicubic",
            "noise": "seed 0", "prompts": PROMPTS, "schedule": "reference", "z": None, "min_samples": None, "subset": None,
            "corruption": None, "severity": None, "delta": None, "variance": None, "timestep_weights": None}
    assert sd().manifest == base  # an ε-model at the defaults: no objective keys, so older runs resume
    assert sd(schedule="statistical", variance="stratified", delta=0.1).manifest == {
        **base, "schedule": "statistical", "z": 3.0, "min_samples": 10, "variance": "stratified", "delta": 0.1}
    eps_native = DDPMObjective(EPS.alphas_cumprod, "epsilon", "native")
    assert sd(error_space="native", objective=eps_native).manifest == {**base, "error_space": "native"}
    assert sd(objective=V).manifest == {**base, "objective": "v_prediction", "error_space": "eps"}
    assert sd(objective=FLOW, no_t5=True, guidance=2.5).manifest == {
        **base, "objective": "flow", "error_space": "eps", "flow_grid": "timesteps", "no_t5": True, "guidance": 2.5}
    assert dit(True).manifest == {"model": "facebook/DiT-XL-2-256", "vae": None, "dataset": "imagenet", "split": "test",
                                  "img_size": 256, "n_trials": 1, "noise": "seed 0", "corruption": None,
                                  "severity": None, "t_interval": 5, "kind": "l2", "randomize_noise": False,
                                  "batch_size": 32}
    assert dit(True, randomize_noise=True).manifest["batch_size"] is None  # the batch no longer sets the noise
    assert set(dit(False).manifest) == {"model", "vae", "dataset", "split", "img_size", "n_trials", "noise", "corruption",
                                        "severity", "to_keep", "n_samples", "loss", "schedule", "z", "min_samples",
                                        "null_normalize", "classes", "delta", "variance", "timestep_weights"}
    assert dit(False, schedule="statistical", delta=0.1, spending="decaying", epsilon=0.01).manifest == {
        **dit(False, schedule="statistical", delta=0.1).manifest, "spending": "decaying", "epsilon": 0.01}
    assert winoground_run(model="clip", version="ViT-B/32", model_path=None, source="s").manifest == {
        "model": "clip", "source": "s", "version": "ViT-B/32"}
    assert winoground_run(model="sd", version="tiny", model_path=None, source="s", img_size=8, native_size=8,
                          noise="seed 0", noise_period=32).manifest == {
        "model": "sd", "source": "s", "img_size": 8, "interpolation": "bilinear", "t_interval": 5, "T": 1000,
        "n_trials": 1, "randomize_noise": False, "noise": "seed 0", "noise_period": 32, "loss": "l2"}


def test_runs_that_differ_in_any_named_setting_get_different_folders():
    variants = [sd(**c) for c in ({}, {"loss": "l1"}, {"interpolation": "lanczos"}, {"img_size": 256}, {"n_trials": 2},
                                  {"schedule": "statistical"}, {"schedule": "statistical", "delta": 0.1},
                                  {"schedule": "statistical", "variance": "stratified"}, {"timestep_weights": "ab"},
                                  {"schedule": "statistical", "delta": 0.1, "spending": "decaying"},
                                  {"schedule": "statistical", "epsilon": 0.01},
                                  {"error_space": "eps"}, {"objective": FLOW, "flow_grid": "uniform_sigma"},
                                  {"guidance": 4.0}, {"no_t5": True}, {"to_keep": [2, 1]}, {"n_samples": [50, 400]})]
    assert len({r.name for r in variants}) == len(variants)
    assert len({str(sorted(r.manifest.items(), key=str)) for r in variants}) == len(variants)


def test_a_setting_given_twice_in_one_description_is_refused():
    run = RunDescription("g", (Setting({"loss": "l2"}, ""), Setting({"loss": "l1"}, "_l1")))
    with pytest.raises(AssertionError, match="loss"):
        run.manifest  # noqa: B018


def test_the_manifest_guards_settings_that_change_numbers_beyond_the_folder_name(tmp_path):
    """dtype, attention and the noise bank's contents: a resume with another value is refused, old folders upgraded."""
    import json

    import pytest

    from diffusion_classifier.errors import InputError
    from diffusion_classifier.records import MANIFEST, check_manifest

    numerics = {"dtype": "torch.float32", "attention": "sdpa", "noise_digest": "abc"}
    check_manifest(tmp_path / "run", {"n_trials": 1}, {"versions": {}}, numerics)
    check_manifest(tmp_path / "run", {"n_trials": 1}, numerics=numerics)  # the same run resumes
    for key, value in [("dtype", "torch.bfloat16"), ("attention", "xformers"), ("noise_digest", "abd")]:
        with pytest.raises(InputError, match=rf'\(1 differ: {key}: folder "{numerics[key]}", command "{value}"\)'):
            check_manifest(tmp_path / "run", {"n_trials": 1}, numerics={**numerics, key: value})
    with pytest.raises(InputError, match=r'\(1 differ: n_trials: folder 1, command 2\)'):  # named settings first
        check_manifest(tmp_path / "run", {"n_trials": 2}, numerics={**numerics, "dtype": "torch.float16"})
    # a folder written before numerics were recorded: its dtype is checked, the rest written in
    old = tmp_path / "old"
    old.mkdir()
    (old / MANIFEST).write_text(json.dumps({"settings": {"n_trials": 1}, "dtype": "torch.float32"}))
    with pytest.raises(InputError, match=r'dtype: folder "torch.float32", command "torch.bfloat16"'):
        check_manifest(old, {"n_trials": 1}, numerics={**numerics, "dtype": "torch.bfloat16"})
    check_manifest(old, {"n_trials": 1}, numerics=numerics)
    assert json.loads((old / MANIFEST).read_text())["numerics"] == numerics
    with pytest.raises(InputError, match="attention"):
        check_manifest(old, {"n_trials": 1}, numerics={**numerics, "attention": "xformers"})
    # a user's image folder: records are by index, so another folder's images are refused by name
    check_manifest(old, {"n_trials": 1}, numerics={**numerics, "images": "aaaa"})  # written in on the next resume
    with pytest.raises(InputError, match=r"holds records of other images \(image list aaaa; the dataset now gives bbbb\)"):
        check_manifest(old, {"n_trials": 1}, numerics={**numerics, "images": "bbbb"})


def test_a_manifest_that_is_a_folder_is_a_one_line_error_and_is_left_alone(tmp_path):
    import pytest

    from diffusion_classifier.errors import InputError
    from diffusion_classifier.records import MANIFEST, check_manifest

    (tmp_path / "run" / MANIFEST).mkdir(parents=True)
    (tmp_path / "run" / MANIFEST / "kept.txt").write_text("x")
    with pytest.raises(InputError, match=r"manifest\.json is a folder, where the run's settings file belongs"):
        check_manifest(tmp_path / "run", {"n_trials": 1})
    assert (tmp_path / "run" / MANIFEST / "kept.txt").read_text() == "x"


def test_a_run_grows_across_subsets_but_not_across_settings(tmp_path):
    """--subset_path only picks images: a folder made on a subset takes the rest of the split, any other setting
    that differs is refused."""
    import pytest

    from diffusion_classifier.errors import InputError
    from diffusion_classifier.records import check_manifest

    check_manifest(tmp_path / "run", {"n_trials": 1, "subset": "first_1000.npy"})
    check_manifest(tmp_path / "run", {"n_trials": 1, "subset": None})  # the whole split into the same folder
    check_manifest(tmp_path / "run", {"n_trials": 1, "subset": "other.npy"})
    with pytest.raises(InputError, match=r"\(1 differ: n_trials: folder 1, command 2\)"):
        check_manifest(tmp_path / "run", {"n_trials": 2, "subset": None})


def test_two_runs_starting_one_folder_at_once_with_other_settings_are_not_both_accepted(tmp_path, monkeypatch):
    """Another process writes the manifest after this one looked for it and before it writes its own: this one is
    checked against it and refused, not written over it (the folder would mix the records of two settings)."""
    from diffusion_classifier.errors import InputError
    from diffusion_classifier.records import MANIFEST, check_manifest

    check_manifest(tmp_path / "run", {"noise": "seed 0"})  # the other process, first to write
    is_file = Path.is_file
    looked = []

    def not_yet_written(path):  # this process's first look at the manifest happened before the other's write
        if path.name == MANIFEST and not looked:
            looked.append(path)
            return False
        return is_file(path)

    monkeypatch.setattr(Path, "is_file", not_yet_written)
    with pytest.raises(InputError, match=r'noise: folder "seed 0", command "seed 1"'):
        check_manifest(tmp_path / "run", {"noise": "seed 1"})
    assert looked and json.loads((tmp_path / "run" / MANIFEST).read_text())["settings"] == {"noise": "seed 0"}
    assert [p.name for p in (tmp_path / "run").iterdir()] == [MANIFEST]  # no temporary file left


def test_a_resume_in_another_dtype_is_refused_before_anything_is_written(tmp_path):
    import numpy as np
    import pytest

    import eval_prob_adaptive
    from diffusion_classifier.errors import InputError

    np.save(tmp_path / "subset.npy", np.arange(3))
    args = ["--version", "tiny", "--dataset", "digits", "--split", "test", "--to_keep", "1", "--n_samples", "4",
            "--subset_path", str(tmp_path / "subset.npy"), "--log_dir", str(tmp_path / "logs"), "--no_progress"]
    first = eval_prob_adaptive.main(args + ["--dtype", "float32"])
    files = sorted(p.name for p in Path(first["folder"]).iterdir())
    with pytest.raises(InputError, match=r'1 differ: dtype: folder "torch.float32", command "torch.bfloat16"'):
        eval_prob_adaptive.main(args + ["--dtype", "bfloat16"])
    assert sorted(p.name for p in Path(first["folder"]).iterdir()) == files
    again = eval_prob_adaptive.main(args + ["--dtype", "float32"])
    assert again["skipped"] == 3 and again["done"] == 0


def test_a_run_of_a_shipped_model_resumes_from_another_checkout(tmp_path):
    """The manifest holds the shipped model's absolute folder; another installation of the toolkit resumes it."""
    from diffusion_classifier.errors import InputError
    from diffusion_classifier.records import check_manifest

    check_manifest(tmp_path, {"model": "/old/checkout/diffusion_classifier/tiny_models/digits-sd", "n_trials": 1})
    check_manifest(tmp_path, {"model": "/usr/lib/python3/site-packages/diffusion_classifier/tiny_models/digits-sd/",
                              "n_trials": 1})
    with pytest.raises(InputError, match="1 differ: model"):
        check_manifest(tmp_path, {"model": "/old/checkout/diffusion_classifier/tiny_models/fashion-sd", "n_trials": 1})
    with pytest.raises(InputError, match="1 differ: model"):
        check_manifest(tmp_path, {"model": "/home/me/my_models/digits-sd", "n_trials": 1})


def test_delta_alone_runs_the_chosen_rule_and_the_plain_rule_stays_reachable():
    """`--schedule statistical --delta D` alone gets ANYTIME_RULE, and its run folder says so; the rule it had
    before is the same command with its settings written out, and keeps its old folder."""
    import eval_prob_adaptive
    from diffusion_classifier.cli import statistical_options
    from diffusion_classifier.schedules.statistical import ANYTIME_RULE

    base = ["--version", "tiny", "--dataset", "digits", "--split", "test", "--schedule", "statistical", "--delta",
            "0.05", "--to_keep", "1", "--n_samples", "200"]

    def run(*flags):
        options = statistical_options(eval_prob_adaptive.parse_args(base + list(flags)))
        return options, sd(schedule="statistical", to_keep=[1], n_samples=[200], **options).name

    options, name = run()
    assert {k: options[k] for k in ANYTIME_RULE} == ANYTIME_RULE
    assert name.endswith("_stat_d0.05_min10_moderated-stratified_decay_eps0.01")
    plain, plain_name = run("--variance", "iid", "--spending", "even", "--min_samples", "10", "--epsilon", "0")
    assert plain["epsilon"] is None and plain_name == "v2-0_1trials_1keep_200samples_stat_d0.05_min10"
    assert run("--min_samples", "4")[1].endswith("_min4_moderated-stratified_decay_eps0.01")


def _perturb_first_tensor(folder: Path) -> None:
    from safetensors.torch import load_file, save_file

    path = sorted((folder / "unet").glob("*.safetensors"))[0]
    state = load_file(path)
    key = sorted(state)[0]
    state[key] = state[key] + 1e-3
    save_file(state, path)


def test_the_weights_fingerprint_follows_what_changes_the_errors_and_nothing_else(tmp_path):
    import shutil

    from diffusion_classifier.loading import TINY_MODELS, weights_fingerprint

    shipped = TINY_MODELS / "digits-sd"
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(shipped, a)
    shutil.copytree(shipped, b)
    fp = weights_fingerprint(shipped)
    assert fp and weights_fingerprint(a) == weights_fingerprint(str(b)) == fp  # a copy is the same model
    (b / "README.md").write_text("another card\n")
    (b / "calibration.json").write_text("{}\n")
    (b / ".cache").mkdir()
    (b / ".cache" / "x").write_text("lock")
    assert weights_fingerprint(b) == fp  # cards, temperatures and hidden files do not change the errors
    _perturb_first_tensor(b)
    assert weights_fingerprint(b) != fp  # a retrained (or fine-tuned) model of the same shape is told apart
    config = json.loads((a / "scheduler" / "scheduler_config.json").read_text())
    (a / "scheduler" / "scheduler_config.json").write_text(json.dumps({**config, "beta_end": 0.02}))
    assert weights_fingerprint(a) not in (fp, weights_fingerprint(b))

    big = tmp_path / "big.bin"  # a large file is sampled: its start, thirds and end
    data = bytearray(torch.randint(0, 256, (1 << 20,), dtype=torch.uint8).numpy().tobytes())
    big.write_bytes(bytes(data))
    before = weights_fingerprint(big)
    for offset in (0, len(data) // 3 + 5, len(data) - 1):
        changed = bytearray(data)
        changed[offset] ^= 1
        big.write_bytes(bytes(changed))
        assert weights_fingerprint(big) != before, offset
    assert weights_fingerprint("nobody-here/not-a-cached-model") is None  # nothing to read: no check
    assert weights_fingerprint("laion2b_s32b_b79k") is None and weights_fingerprint(None) is None


def test_a_resume_with_other_model_weights_is_refused_and_an_old_folder_gets_the_fingerprint(tmp_path):
    import shutil

    import numpy as np

    import eval_prob_adaptive
    from diffusion_classifier.errors import InputError
    from diffusion_classifier.loading import TINY_MODELS
    from diffusion_classifier.records import MANIFEST, WEIGHTS_KEY

    model = tmp_path / "model"
    shutil.copytree(TINY_MODELS / "digits-sd", model)
    np.save(tmp_path / "subset.npy", np.arange(2))
    args = ["--model", str(model), "--dataset", "digits", "--split", "test", "--to_keep", "1", "--n_samples", "4",
            "--subset_path", str(tmp_path / "subset.npy"), "--log_dir", str(tmp_path / "logs"), "--no_progress"]
    first = eval_prob_adaptive.main(args)
    manifest_path = Path(first["folder"]) / MANIFEST
    manifest = json.loads(manifest_path.read_text())
    recorded = manifest["numerics"][WEIGHTS_KEY]
    files = {p.name: p.read_bytes() for p in Path(first["folder"]).iterdir()}
    shutil.copytree(model, tmp_path / "saved")
    _perturb_first_tensor(model)
    with pytest.raises(InputError, match=rf"holds records of other model weights \(fingerprint {recorded}; "):
        eval_prob_adaptive.main(args)
    assert {p.name: p.read_bytes() for p in Path(first["folder"]).iterdir()} == files  # nothing written
    shutil.rmtree(model)
    shutil.copytree(tmp_path / "saved", model)
    assert eval_prob_adaptive.main(args)["skipped"] == 2  # the old weights back: it resumes
    # a folder written before fingerprints were kept resumes, and is guarded from then on
    del manifest["numerics"][WEIGHTS_KEY]
    manifest_path.write_text(json.dumps(manifest))
    assert eval_prob_adaptive.main(args)["skipped"] == 2
    assert json.loads(manifest_path.read_text())["numerics"][WEIGHTS_KEY] == recorded
