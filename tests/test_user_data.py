"""Data as users hold it: Hugging Face datasets, unreadable images, prompt tables, side files, ImageNet-R/Sketch.

Every case runs a real script on the shipped tiny models and tiny images and checks the exit status, the
last line of stderr (or of stdout), that no traceback is printed and that records written before are
intact. The cases in SUBPROCESS run as subprocesses, started together (3 at a time), each test waiting for
its own; the others call the same boundary in-process (cli.run(main, argv), what `python script.py argv`
runs) to save the start-up time of importing torch, as tests/test_cli_failures.py does.
"""
from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion_classifier.data.datasets import IMAGENET_WNIDS
from diffusion_classifier.records import load_record
from test_cli_failures import ENV, ROOT, assert_user_error, command, last_line, run_in_process

N_IMAGES = 20  # the first two digits test images of each class (every class folder 0..9 holds some)
DIGITS_CSV = ROOT / "prompts" / "digits_prompts.csv"
R_CLASSES = [1, 3, 4]  # ImageNet-1k indices of the tiny ImageNet-R / Sketch copies (below 10: the tiny DiT scores them)


def _sd(*extra) -> list:
    return ["--version", "tiny", "--to_keep", "1", "--n_samples", "2", "--no_progress", *extra]


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _truncated_jpeg(path: Path) -> None:
    """A JPEG whose header reads but whose pixel data is cut short: found only when decoded."""
    noise = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype("uint8")
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, format="JPEG", quality=95)
    path.write_bytes(buf.getvalue()[: int(len(buf.getvalue()) * 0.7)])


def _digits_folder(root: Path) -> list[tuple[Path, int]]:
    """Two digits test images per class as <label>/<index>.png; returns (file, label) in ImageFolder order."""
    from diffusion_classifier.data.digits import DigitsDataset

    ds = DigitsDataset("test")
    chosen = [i for c in range(10) for i in [k for k, t in enumerate(ds.targets) if t == c][:2]]
    for i in chosen:
        img, label = ds[i]
        (root / str(label)).mkdir(parents=True, exist_ok=True)
        img.save(root / str(label) / f"{i:03d}.png")
    from torchvision.datasets import ImageFolder

    return [(Path(p), y) for p, y in ImageFolder(str(root)).samples]


def _hf_datasets(tmp: Path, samples: list[tuple[Path, int]]) -> None:
    """The same images as three Hugging Face datasets: save_to_disk, the hub's parquet layout, one parquet file."""
    datasets = pytest.importorskip("datasets")
    from diffusion_classifier.data.digits import CLASSNAMES

    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASSNAMES)})
    rows = {"image": [{"bytes": p.read_bytes(), "path": p.name} for p, _ in samples], "label": [y for _, y in samples]}
    ds = datasets.Dataset.from_dict(rows, features=features)
    datasets.DatasetDict({"test": ds}).save_to_disk(str(tmp / "hf_disk"))
    (tmp / "hf_hub" / "data").mkdir(parents=True)
    ds.to_parquet(str(tmp / "hf_hub" / "data" / "test-00000-of-00001.parquet"))
    ds.to_parquet(str(tmp / "hf_file.parquet"))
    bad = dict(rows, image=list(rows["image"]))
    bad["image"][3] = {"bytes": b"this row holds no image", "path": "digit_3.png"}
    datasets.DatasetDict({"test": datasets.Dataset.from_dict(bad, features=features)}).save_to_disk(str(tmp / "hf_bad"))


def _wnid_folders(root: Path, folder: str, ext: str) -> None:
    for k in R_CLASSES:
        d = root / folder / IMAGENET_WNIDS[k]
        d.mkdir(parents=True)
        for j in range(2):
            Image.new("RGB", (8, 8), (40 * k, 60 * j, 0)).save(d / f"im{j}{ext}")


def _broken_model(tmp: Path, name: str, part: str, text: str) -> Path:
    folder = tmp / name
    shutil.copytree(ROOT / "diffusion_classifier" / "tiny_models" / "digits-sd", folder)
    (folder / part).write_text(text)
    return folder


def _winoground(tmp: Path) -> Path:
    from conftest import load_script

    data = tmp / "wino_bad"
    load_script("scripts/make_digits_winoground.py").main(["--out", str(data), "--n", "3"])
    (data / "images" / "ex_1_img_0.png").write_text("not a png")
    return data


def _inputs(tmp: Path) -> dict:
    samples = _digits_folder(tmp / "clean")
    shutil.copytree(tmp / "clean", tmp / "bad")
    (tmp / "bad" / "3").mkdir(exist_ok=True)
    (tmp / "bad" / "3" / "zz_text.png").write_text("hello, this is not an image\n")
    _truncated_jpeg(tmp / "bad" / "9" / "zz_cut.jpg")
    shutil.copytree(tmp / "clean", tmp / "midrun")
    _truncated_jpeg(tmp / "midrun" / "9" / "zz_cut.jpg")  # last in ImageFolder order
    _hf_datasets(tmp, samples)
    _wnid_folders(tmp / "shifts", "imagenet-r", ".jpg")
    _wnid_folders(tmp / "shifts", "sketch", ".JPEG")
    rows = DIGITS_CSV.read_text().splitlines()
    (tmp / "swapped.csv").write_text("\n".join(rows[:10] + [rows[10].replace(",9", ",8")]) + "\n")  # nine -> 8
    noise = torch.randn(8, 3, 8, 8)
    noise[2, 0, 0, 0] = float("nan")
    noise[5, 1, 2, 3] = float("inf")
    torch.save(noise, tmp / "nan_noise.pt")
    (tmp / "a_file").write_text("")
    run = tmp / "manifest_logs" / "digits" / "vtiny_1trials_1keep_2samples_8"
    run.mkdir(parents=True)
    (run / "manifest.json").write_text('{"settings": {"dataset": "dig')
    (run / "000.pt").write_bytes(b"a record")
    return {"samples": samples, "wino": _winoground(tmp),
            "bad_index": _broken_model(tmp, "bad_index", "model_index.json", '{"_class_name": "StableDiff'),
            "bad_config": _broken_model(tmp, "bad_config", "text_encoder/config.json", "{'hidden_size': 32}")}


def _cases(tmp: Path, made: dict) -> dict[str, list]:
    a = lambda *extra: command("eval_prob_adaptive.py", *_sd(*extra))  # noqa: E731
    folder = lambda name, *extra: a("--dataset", "imagefolder", "--dataset_root", tmp / name,  # noqa: E731
                                    "--prompt_path", DIGITS_CSV, "--log_dir", tmp / f"logs_{name}", *extra)
    hf = lambda name, *extra: a("--dataset", "hf", "--dataset_root", tmp / name, "--split", "test",  # noqa: E731
                                "--prompt_path", DIGITS_CSV, "--log_dir", tmp / "logs_hf", *extra)
    digits = lambda *extra: a("--dataset", "digits", "--split", "test", "--log_dir", tmp / "logs_digits", *extra)  # noqa: E731
    dit = lambda *extra: command("eval_prob_dit.py", "--model", "tiny", "--no_progress", *extra)  # noqa: E731
    wino = lambda *extra: command("run_winoground.py", "--version", "tiny", "--data_dir", made["wino"],  # noqa: E731
                                  "--t_interval", "250", "--log_dir", tmp / "logs_wino", "--no_progress", *extra)
    return {
        "clean": folder("clean"),
        "bad_stops": folder("bad"),
        "bad_skipped": folder("bad", "--skip_unreadable", "--log_dir", tmp / "logs_skip"),
        "midrun": folder("midrun", "--image_batch", "1"),
        "hf_disk": hf("hf_disk"),
        "hf_hub": hf("hf_hub", "--log_dir", tmp / "logs_hub"),
        "hf_file": hf("hf_file.parquet", "--log_dir", tmp / "logs_file"),
        "hf_bad_row": hf("hf_bad"),
        "hf_split": hf("hf_hub", "--split", "train"),
        "hf_no_prompts": command("eval_prob_adaptive.py", *_sd("--dataset", "hf", "--dataset_root", tmp / "hf_hub",
                                                                "--split", "test", "--log_dir", tmp / "logs_hf")),
        "dit_bad": dit("--dataset", "imagefolder", "--dataset_root", tmp / "bad", "--cls", 3, "--t_interval", 500,
                       "--log_dir", tmp / "logs_dit"),
        "dit_skipped": dit("--dataset", "imagefolder", "--dataset_root", tmp / "bad", "--cls", 3, "--t_interval", 500,
                           "--log_dir", tmp / "logs_dit", "--skip_unreadable"),
        "wino_bad": wino(),
        "wino_skipped": wino("--skip_unreadable"),
        "swapped_prompts": digits("--prompt_path", tmp / "swapped.csv"),
        "nan_noise": digits("--noise_path", tmp / "nan_noise.pt"),
        "bad_model_index": digits("--model", made["bad_index"]),
        "bad_component_config": digits("--model", made["bad_config"]),
        "manifest_not_json": digits("--log_dir", tmp / "manifest_logs"),
        "save_noise_no_folder": command("scripts/save_noise.py", "--out", tmp / "no_such_folder" / "noise.pt"),
        "save_noise_under_file": command("scripts/save_noise.py", "--out", tmp / "a_file" / "noise.pt"),
        "imagenetR_absent": a("--dataset", "imagenetR", "--dataset_root", tmp / "nowhere", "--prompt_path", DIGITS_CSV,
                              "--log_dir", tmp / "logs_r"),
        "sketch_absent_dit": dit("--dataset", "imagenet_sketch", "--dataset_root", tmp / "nowhere", "--to_keep", 1,
                                 "--n_samples", 2, "--log_dir", tmp / "logs_r"),
        "sketch_dit": dit("--dataset", "imagenet_sketch", "--dataset_root", tmp / "shifts", "--to_keep", 1,
                          "--n_samples", 2, "--log_dir", tmp / "logs_r"),
        "quiet": digits("--subset_path", tmp / "none.npy", "--log_dir", tmp / "logs_quiet"),
        "verbose": digits("--subset_path", tmp / "none.npy", "--log_dir", tmp / "logs_verbose", "--verbose"),
    }


# one or more per entry point, and the runs whose records or output the tests compare
SUBPROCESS = {"bad_skipped", "midrun", "hf_bad_row", "dit_skipped", "wino_bad", "save_noise_no_folder", "quiet",
              "verbose"}


class Cases:
    """The cases' commands; result(name) is the finished process of a subprocess case, or runs it in-process."""

    def __init__(self, tmp: Path, made: dict, env: dict, start: bool):
        self.tmp, self.made, self.env = tmp, made, env
        self.commands = _cases(tmp, made)
        self.pool = ThreadPoolExecutor(max_workers=3)
        # the subprocess cases start at once (3 at a time) when a test that reads them is selected
        self.futures = {name: self.pool.submit(subprocess.run, cmd, capture_output=True, text=True, env=env, timeout=300)
                        for name, cmd in self.commands.items() if name in SUBPROCESS and start}
        self.done: dict[str, subprocess.CompletedProcess] = {}

    def result(self, name: str, capsys=None, monkeypatch=None) -> subprocess.CompletedProcess:
        if name in self.futures:
            return self.futures[name].result()
        if name not in self.done:
            monkeypatch.setenv("HF_DATASETS_CACHE", self.env["HF_DATASETS_CACHE"])
            self.done[name] = run_in_process(capsys, self.commands[name])
        return self.done[name]


@pytest.fixture(scope="module")
def cases(tmp_path_factory, request):
    """Build the inputs, then start every subprocess case (3 at a time); each test waits for its own."""
    tmp = tmp_path_factory.mktemp("user_data")
    made = _inputs(tmp)
    np.save(tmp / "none.npy", np.arange(2))
    env = {**ENV, "HF_DATASETS_CACHE": str(tmp / "hf_cache")}  # load_dataset's arrow cache stays in the test folder
    start = any(item.get_closest_marker("slow") and item.module is request.module for item in request.session.items)
    c = Cases(tmp, made, env, start)
    yield c
    c.pool.shutdown(wait=True)


@pytest.fixture
def runs(cases, capsys, monkeypatch):
    """(tmp folder, built inputs, result(case name) -> finished process, subprocess environment)."""
    monkeypatch.delenv("DIFFUSION_CLASSIFIER_DEBUG", raising=False)
    return cases.tmp, cases.made, lambda name: cases.result(name, capsys, monkeypatch), cases.env


def _ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return last_line(proc.stdout)


def _run_folder(logs: Path) -> Path:
    (folder,) = [p.parent for p in logs.rglob("manifest.json")]
    return folder


def _records(folder: Path) -> dict[int, dict]:
    return {int(p.stem): load_record(p) for p in sorted(folder.glob("*.pt"))}


def _same_records(a: dict[int, dict], b: dict[int, dict]) -> None:
    assert sorted(a) == sorted(b)
    for i in a:
        assert a[i]["pred"] == b[i]["pred"] and a[i]["label"] == b[i]["label"], i
        for p in a[i]["errors"]:
            assert a[i]["errors"][p]["t"].tolist() == b[i]["errors"][p]["t"].tolist()
            torch.testing.assert_close(a[i]["errors"][p]["pred_errors"], b[i]["errors"][p]["pred_errors"],
                                       rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------- Hugging Face datasets


@pytest.mark.parametrize("case, logs", [("hf_disk", "logs_hf"), ("hf_hub", "logs_hub"), ("hf_file", "logs_file")])
def test_hf_dataset_gives_the_image_folders_records(runs, case, logs):
    tmp, made, result, _ = runs
    clean = _ok(result("clean"))
    line = _ok(result(case))
    assert re.search(rf"accuracy [\d.]+% over {N_IMAGES} images \({N_IMAGES} classified now", line), line
    assert line.split(": accuracy")[1] == clean.split(": accuracy")[1]  # same accuracy and counts
    folder = _run_folder(tmp / logs)
    name = {"hf_disk": "hf_hf_disk", "hf_hub": "hf_hf_hub", "hf_file": "hf_hf_file"}[case]
    assert folder.parent.name == name  # each Hugging Face dataset has its own log folder
    assert json.loads((folder / "manifest.json").read_text())["settings"]["hf_columns"] == ["image", "label"]
    records = _records(folder)
    assert [r["label"] for _, r in sorted(records.items())] == [y for _, y in made["samples"]]
    _same_records(records, _records(_run_folder(tmp / "logs_clean")))


@pytest.mark.slow  # launches a script as a separate process
def test_hf_errors_are_one_line(runs):
    tmp, _, result, _ = runs
    assert_user_error(result("hf_split"), r"hf_hub has split\(s\) test, not 'train': pass --split with one "
                                                    r"of them$")
    assert_user_error(result("hf_no_prompts"),
                      r"--dataset hf has no shipped prompts .*: write them with scripts/write_prompts\.py --dataset hf "
                      r"--dataset_root DIR --split S and pass --prompt_path$")
    line = assert_user_error(result("hf_bad_row"),
                             r"^error: unreadable image .*hf_bad\[test\] row 3 \(digit_3\.png\): not an image format PIL "
                             r"can read \(it starts with b'this row holds n'\); nothing was computed: replace or remove")
    assert line.endswith("or pass --skip_unreadable to leave such images out (they are listed in the final line and "
                         "the manifest)")


def test_write_prompts_from_hf_class_names(runs, capsys, monkeypatch):
    tmp, _, _, env = runs
    monkeypatch.setenv("HF_DATASETS_CACHE", env["HF_DATASETS_CACHE"])
    proc = run_in_process(capsys, command("scripts/write_prompts.py", "--dataset", "hf", "--dataset_root", tmp / "hf_hub",
                                          "--split", "test", "--out_dir", tmp / "prompts_hf", "--template",
                                          "a photo of a {}.", "the digit {}"))
    assert _ok(proc).endswith("hf_hf_hub_prompts.csv: 20 prompts, 10 classes")
    lines = (tmp / "prompts_hf" / "hf_hf_hub_prompts.csv").read_text().splitlines()
    assert lines[:4] == ["prompt,classname,classidx", "a photo of a zero.,zero,0", "the digit zero,zero,0",
                         "a photo of a one.,one,1"]
    assert lines[-1] == "the digit nine,nine,9"


def test_write_prompts_from_image_folder_names_and_the_hint_that_points_there(tmp_path):
    from conftest import load_script

    from diffusion_classifier.errors import MissingError

    for c in ("sea_lion", "cat"):
        (tmp_path / "imgs" / "test" / c).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "imgs" / "test" / c / "a.png")
    load_script("scripts/write_prompts.py").main(["--dataset", "imagefolder", "--dataset_root", str(tmp_path / "imgs"),
                                                   "--split", "test", "--out", str(tmp_path / "p.csv")])
    assert (tmp_path / "p.csv").read_text().splitlines() == ["prompt,classname,classidx", "a photo of a cat.,cat,0",
                                                              "a photo of a sea lion.,sea_lion,1"]
    with pytest.raises(MissingError, match=r"--dataset imagefolder has no shipped prompts .*: write them with "
                                           r"scripts/write_prompts\.py --dataset imagefolder --dataset_root DIR --split S"):
        load_script("eval_prob_adaptive.py").main(["--version", "tiny", "--dataset", "imagefolder", "--dataset_root",
                                                    str(tmp_path / "imgs"), "--log_dir", str(tmp_path / "logs"),
                                                    "--to_keep", "1", "--n_samples", "2"])


# ---------------------------------------------------------------- unreadable images


def test_unreadable_image_found_from_headers_before_anything_runs(runs):
    tmp, _, result, _ = runs
    assert_user_error(result("bad_stops"),
                      r"^error: unreadable image .*/bad/3/zz_text\.png: not an image format PIL can read \(it starts "
                      r"with b'hello, this is n'\); nothing was computed: replace or remove the file\(s\), or pass "
                      r"--skip_unreadable")
    assert not list((tmp / "logs_bad").rglob("*.pt"))


@pytest.mark.slow  # launches a script as a separate process
def test_skip_unreadable_equals_the_run_without_the_bad_files(runs):
    tmp, made, result, _ = runs
    clean, skipped = _ok(result("clean")), _ok(result("bad_skipped"))
    acc = lambda line: re.search(r"accuracy ([\d.]+)% over (\d+) images", line).groups()  # noqa: E731
    assert acc(skipped) == acc(clean) and acc(clean)[1] == str(N_IMAGES)
    # one found from its header, one only when decoded (its header reads): both listed, neither counted
    assert re.search(r", 2 unreadable skipped: \S+/bad/3/zz_text\.png, \S+/bad/9/zz_cut\.jpg\)$", skipped), skipped
    folder = _run_folder(tmp / "logs_skip")
    listed = json.loads((folder / "manifest.json").read_text())["unreadable"]
    assert sorted(Path(v.split(":")[0]).name for v in listed.values()) == ["zz_cut.jpg", "zz_text.png"]
    assert "truncated JPEG file" in " ".join(listed.values())
    # the same images get the same records (matched by file: the bad files shift the indices)
    from torchvision.datasets import ImageFolder

    files = [Path(p).relative_to(tmp / "bad") for p, _ in ImageFolder(str(tmp / "bad")).samples]
    by_file = {files[i]: r for i, r in _records(folder).items()}
    clean_records = _records(_run_folder(tmp / "logs_clean"))
    assert len(by_file) == N_IMAGES
    _same_records({k: by_file[p.relative_to(tmp / "clean")] for k, (p, _) in enumerate(made["samples"])}, clean_records)


@pytest.mark.slow  # launches a script as a separate process
def test_image_that_fails_mid_run_keeps_the_finished_records_then_resume_skips_it(runs, capsys):
    tmp, _, result, _ = runs
    proc = result("midrun")
    assert_user_error(proc, rf"^error: unreadable image \S+/midrun/9/zz_cut\.jpg: a truncated JPEG file \(image file "
                            rf"is truncated \(\d+ bytes not processed\)\); the {N_IMAGES} images finished in this run "
                            rf"are saved: replace or remove the file and re-run the same command to resume, or pass "
                            rf"--skip_unreadable")
    folder = _run_folder(tmp / "logs_midrun")
    records = _records(folder)  # every finished record loads and is complete
    assert len(records) == N_IMAGES and all(set(r) == {"errors", "pred", "label"} for r in records.values())
    assert not [p for p in folder.iterdir() if p.name.endswith((".tmp", ".claim"))]
    mtimes = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.pt")}
    resumed = run_in_process(capsys, proc.args + ["--skip_unreadable"])
    line = _ok(resumed)
    assert re.search(rf": accuracy [\d.]+% over {N_IMAGES} images \(0 classified now, {N_IMAGES} already done, .*1 "
                     rf"unreadable skipped: \S+/zz_cut\.jpg\)$", line), line
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("*.pt")} == mtimes  # nothing rewritten


@pytest.mark.slow  # launches a script as a separate process
def test_dit_and_winoground_unreadable_images(runs):
    tmp, _, result, _ = runs
    assert_user_error(result("dit_bad"), r"^error: unreadable image \S+/bad/3/zz_text\.png: not an image")
    line = _ok(result("dit_skipped"))
    assert re.search(rf"/3: {N_IMAGES} images scored now, 0 already done \(.*, 2 unreadable skipped: \S+/zz_text\.png, "
                     rf"\S+/zz_cut\.jpg\)$", line), line
    assert len(list((tmp / "logs_dit").rglob("3/*.pt"))) == N_IMAGES
    assert_user_error(result("wino_bad"),
                      r"^error: unreadable image \S+/images/ex_1_img_0\.png: not an image format PIL can read \(it "
                      r"starts with b'not a png'\); nothing was computed")
    line = _ok(result("wino_skipped"))
    assert re.search(r": text score [\d.]+, image score [\d.]+, group score [\d.]+ over 2 examples \(2 computed now, "
                     r"0 already done, 0 repaired, 1 unreadable skipped: \S+/ex_1_img_0\.png\)$", line), line
    result = json.loads(next((tmp / "logs_wino").rglob("results.json")).read_text())
    assert result["n"] == 2 and len(result["unreadable"]) == 1


# ---------------------------------------------------------------- prompt tables and side files


def test_prompts_without_a_class_are_refused(runs):
    tmp, _, result, _ = runs
    assert_user_error(result("swapped_prompts"),
                      r"swapped\.csv: no prompt row for 1 class of the images to classify: 9 \(nine: 36 images\); "
                      r"swapped classidx\? data row 10 \('nine'\) has classidx 8, not 9; such images would be scored "
                      r"against prompts that cannot win: add at least one row per class")


@pytest.mark.slow  # launches a script as a separate process
def test_side_files_are_one_line(runs):
    tmp, made, result, _ = runs
    assert_user_error(result("nan_noise"),
                      r"noise file \S+nan_noise\.pt holds 1 NaN and 1 infinite values \(in 2 of its 8 rows\); every "
                      r"error computed with them would be NaN: .*scripts/save_noise\.py$")
    assert_user_error(result("bad_model_index"),
                      rf"^error: model file {re.escape(str(made['bad_index']))}/model_index\.json is not valid JSON "
                      r"\(line 1 column 17: Unterminated string starting at\); it is damaged or was cut short")
    assert_user_error(result("bad_component_config"),
                      r"bad_config/text_encoder/config\.json is not valid JSON \(line 1 column 2: Expecting property "
                      r"name enclosed in double quotes\)")
    assert_user_error(result("manifest_not_json"),
                      r"manifest\.json is not valid JSON \(JSONDecodeError: .*\); it records the settings of the run's "
                      r"records: restore it, or move the folder aside")
    run = tmp / "manifest_logs" / "digits" / "vtiny_1trials_1keep_2samples_8"
    assert (run / "000.pt").read_bytes() == b"a record" and sorted(p.name for p in run.iterdir()) == \
        ["000.pt", "manifest.json"]
    assert_user_error(result("save_noise_no_folder"),
                      r"--out \S+/no_such_folder/noise\.pt: its folder \S+/no_such_folder does not exist; create it "
                      r"\(mkdir -p \S+\) or pass another --out$")
    assert not (tmp / "no_such_folder").exists()
    assert_user_error(result("save_noise_under_file"), r"a_file is not a folder; pass another --out$")


# ---------------------------------------------------------------- ImageNet-R and ImageNet-Sketch


def test_imagenet_r_prompts_sd_and_dit_runs(runs, capsys):
    tmp, _, result, _ = runs
    run = lambda *cmd: run_in_process(capsys, command(*cmd))  # noqa: E731
    assert _ok(run("scripts/write_prompts.py", "--dataset", "imagenetR", "--dataset_root", tmp / "shifts", "--out",
                   tmp / "r.csv")).endswith("r.csv: 3 prompts, 3 classes")
    assert (tmp / "r.csv").read_text().splitlines() == [
        "prompt,classname,classidx", "a photo of a goldfish.,goldfish,1", "a photo of a tiger shark.,tiger shark,3",
        "a photo of a hammerhead shark.,hammerhead shark,4"]
    line = _ok(run("eval_prob_adaptive.py", *_sd("--dataset", "imagenetR", "--dataset_root", tmp / "shifts",
                                                  "--prompt_path", tmp / "r.csv", "--log_dir", tmp / "logs_r")))
    assert re.search(r"/imagenetR/vtiny_\S+: accuracy [\d.]+% over 6 images", line), line
    labels = sorted(r["label"] for r in _records(next((tmp / "logs_r" / "imagenetR").iterdir())).values())
    assert labels == [1, 1, 3, 3, 4, 4]  # ImageNet-1k indices of the wnid folders
    line = _ok(run("eval_prob_dit.py", "--model", "tiny", "--dataset", "imagenetR", "--dataset_root", tmp / "shifts",
                   "--to_keep", 1, "--n_samples", 2, "--log_dir", tmp / "logs_r", "--no_progress"))
    assert "over 6 images (6 classified now, 0 already done, 36 denoiser evaluations, 6 per image" in line, line
    folder = tmp / "logs_r" / "imagenetR" / "digits-dit_1trials_1keep_2samples"
    assert json.loads((folder / "manifest.json").read_text())["settings"]["classes"] == R_CLASSES  # the classes present
    assert {r["pred"] for r in _records(folder).values()} <= set(R_CLASSES)
    line = _ok(result("sketch_dit"))
    assert "over 6 images (6 classified now, 0 already done, 36 denoiser evaluations" in line, line


def test_imagenet_r_and_sketch_absent(runs):
    _, _, result, _ = runs
    assert_user_error(result("imagenetR_absent"),
                      r"imagenetR data not found at \S+/nowhere/imagenet-r: pass --dataset_root DIR or set "
                      r"DATASET_ROOT; expected \S+/imagenet-r/<wnid>/\*\.jpg \(the ImageNet-R release: 200 ImageNet-1k "
                      r"wnid folders\)$")
    assert_user_error(result("sketch_absent_dit"),
                      r"imagenet_sketch data not found at \S+/nowhere/sketch: .*expected \S+/sketch/<wnid>/\*\.JPEG")


# ---------------------------------------------------------------- quiet output


@pytest.mark.slow  # launches a script as a separate process
def test_loading_is_quiet_unless_verbose(runs):
    _, _, result, _ = runs
    quiet = result("quiet")
    line = _ok(quiet)
    assert quiet.stderr == "", quiet.stderr  # no loading bars or library warnings
    assert re.search(r": accuracy [\d.]+% over 2 images \(2 classified now", line), line
    verbose = result("verbose")
    assert last_line(verbose.stdout) == line.replace("logs_quiet", "logs_verbose")
    import transformers

    if int(transformers.__version__.split(".")[0]) >= 5:  # its "Loading weights" bar is back with --verbose
        assert "Loading weights" in verbose.stderr, verbose.stderr


# ---------------------------------------------------------------- the library pieces, in-process


def _hf_rows(n_rows: int = 4):
    return [{"bytes": _png(Image.new("RGB", (6, 4), (40 * k, 0, 0))), "path": f"im{k}.png"} for k in range(n_rows)]


def test_hf_columns_labels_and_layouts(tmp_path):
    datasets = pytest.importorskip("datasets")
    from diffusion_classifier.data.registry import get_dataset, num_classes

    rows = _hf_rows()
    feat = datasets.Features({"img": datasets.Image(), "labels": datasets.Value("string"), "extra": datasets.Value("int32")})
    ds = datasets.Dataset.from_dict({"img": rows, "labels": ["dog", "cat", "dog", "ant"], "extra": [0, 1, 2, 3]},
                                    features=feat)
    ds.save_to_disk(str(tmp_path / "one"))  # a Dataset, not a DatasetDict: one split, none named
    hf = get_dataset("hf", tmp_path / "one", "anything")
    assert (hf.image_column, hf.label_column) == ("img", "labels")  # the usual names' second spellings
    assert hf.classes == ["ant", "cat", "dog"] and hf.targets == [2, 1, 2, 0]  # strings: sorted, as folders are
    assert num_classes("hf", hf) == 3
    img, label = hf[1]
    assert img.size == (6, 4) and img.getpixel((0, 0)) == (40, 0, 0) and label == 1
    # the arrow file inside that folder, read on its own
    (arrow,) = (tmp_path / "one").glob("*.arrow")
    assert get_dataset("hf", arrow, "test", label_column="extra").targets == [0, 1, 2, 3]  # integers: classes 0..3
    with pytest.raises(ValueError, match=r"no column 'y' for --label_column; the dataset's columns are img, labels, extra"):
        get_dataset("hf", tmp_path / "one", "test", label_column="y")
    with pytest.raises(ValueError, match=r"column 'extra' holds Value\(.*\), not images; expected an Image feature"):
        get_dataset("hf", tmp_path / "one", "test", image_column="extra")
    with pytest.raises(ValueError, match="apply to --dataset hf only, not 'digits'"):
        get_dataset("digits", tmp_path, "test", label_column="labels")

    named = datasets.Dataset.from_dict({"image": rows, "label": [0, -1, 1, -1]},
                                       features=datasets.Features({"image": datasets.Image(),
                                                                   "label": datasets.ClassLabel(names=["a", "b"])}),
                                       split="test")
    named.save_to_disk(str(tmp_path / "named"))
    with pytest.raises(ValueError, match=r"holds the test split only, not 'train': pass --split test"):
        get_dataset("hf", tmp_path / "named", "train")
    with pytest.raises(ValueError, match=r"column 'label': 2 of 4 rows have no class label \(e\.g\. row 1: -1\); an "
                                         r"unlabelled split cannot be scored"):
        get_dataset("hf", tmp_path / "named", "test")
    with pytest.raises(FileNotFoundError, match=r"hf data not found at \S+/absent: pass --dataset_root PATH; expected a "
                                                r"save_to_disk folder"):
        get_dataset("hf", tmp_path / "absent", "test")


def test_hf_without_the_datasets_package(tmp_path, monkeypatch):
    import sys

    from diffusion_classifier.data.registry import get_dataset
    from diffusion_classifier.errors import MissingPackageError

    monkeypatch.setitem(sys.modules, "datasets", None)  # what an environment without it gives on import
    with pytest.raises(MissingPackageError, match=r"^--dataset hf needs the datasets package: pip install datasets \(or "
                                                  r"pip install 'diffusion-classifier\[hf\]'\)$"):
        get_dataset("hf", tmp_path, "test")


def test_header_checks(tmp_path):
    from diffusion_classifier.data.images import UnreadableImageError, decode_rgb, find_unreadable, header_problem
    from diffusion_classifier.data.registry import get_dataset

    good = _png(Image.new("RGB", (16, 16), (1, 2, 3)))
    assert header_problem(good) is None
    assert header_problem(good[: len(good) // 2]).startswith("a truncated PNG file (")  # chunk checksums, no pixels
    (tmp_path / "empty.png").write_bytes(b"")
    assert header_problem(tmp_path / "empty.png") == "an empty file (0 bytes)"
    with pytest.raises(UnreadableImageError, match=r"^unreadable image x\.png: not an image format PIL can read \(it "
                                                   r"starts with b'GIF89a'\)$"):
        decode_rgb(b"GIF89a", "x.png")  # a GIF signature with nothing after it
    for name, data in (("a/0.png", good), ("a/1.png", b"text"), ("b/0.png", good)):
        (tmp_path / "f" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "f" / name).write_bytes(data)
    bad = find_unreadable(get_dataset("imagefolder", tmp_path / "f", "test"), [0, 1, 2])
    assert [(b.index, Path(b.name).name) for b in bad] == [(1, "1.png")]
    assert find_unreadable(get_dataset("digits", tmp_path, "test"), range(5)) == []  # in memory: nothing to check


def test_deep_images_and_files_with_a_byte_order_mark(tmp_path):
    from diffusion_classifier.classifier import preprocess
    from diffusion_classifier.data.compositional import read_jsonl
    from diffusion_classifier.data.images import decode_rgb

    # a 16-bit greyscale PNG (medical and scientific images) reads as its 8-bit equivalent, not clipped to white; so
    # does a float image in [0, 1], a file's or one handed to the API
    ramp = np.linspace(0, 65535, 24 * 20).reshape(24, 20).astype(np.uint16)
    eight = np.rint(ramp / 257.0).astype(np.uint8)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    Image.fromarray((ramp / 65535.0).astype(np.float32)).save(tmp_path / "float.tiff")
    for name in ("deep.png", "float.tiff"):
        got = np.asarray(decode_rgb(tmp_path / name))
        assert got.shape == (24, 20, 3) and (got == got[..., :1]).all()
        assert int(np.abs(got[..., 0].astype(int) - eight).max()) <= 1
    ref = preprocess([Image.fromarray(eight)], 16)
    for im in (Image.open(tmp_path / "deep.png"), Image.fromarray((ramp / 65535.0).astype(np.float32))):
        assert float((preprocess([im], 16) - ref).abs().max()) < 0.02
        assert float((preprocess([im], 16, adm_crop=True) - preprocess([Image.fromarray(eight)], 16, adm_crop=True)).abs().max()) < 0.02
    # a jsonl saved with a UTF-8 byte order mark (as some Windows editors write it) and CRLF line ends
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    line = json.dumps({"image": "a.png", "captions": ["a cat", "a dog"], "label": 1})
    (tmp_path / "items.jsonl").write_bytes(("\ufeff" + line + "\r\n\r\n" + line.replace("a.png", "./a.png") + "\r\n").encode())
    items = read_jsonl(tmp_path / "items.jsonl")
    assert [(i.label, i.captions) for i in items] == [(1, ("a cat", "a dog"))] * 2


def test_prompt_coverage_rules():
    from diffusion_classifier.data.prompts import PromptTable, check_coverage, dataset_prompts

    table = PromptTable(["a cat", "a kitten", "a dog"], ["cat", "cat", "dog"], [0, 0, 1])
    check_coverage(table, [0, 1, 1, 0], ["cat", "dog", "bird"])  # several rows per class: a prompt ensemble
    check_coverage(table, [0, 1], ["cat", "dog", "bird"])  # class 2 has no image to classify: allowed
    with pytest.raises(ValueError, match=r"^p\.csv: no prompt row for 1 class of the images to classify: 2 \(bird: 1 "
                                         r"image\); such images"):
        check_coverage(table, [0, 2], ["cat", "dog", "bird"], "p.csv")
    imagenet = dataset_prompts("imagenet")
    missile = [c for c, n in enumerate(imagenet.classnames) if n == "missile"]
    assert len(missile) == 2  # two ImageNet classes share the name
    rows = [k for k, c in enumerate(imagenet.classidx) if c != missile[0]]
    partial = PromptTable(*[[col[k] for k in rows] for col in (imagenet.prompts, imagenet.classnames, imagenet.classidx)])
    with pytest.raises(ValueError) as e:
        check_coverage(partial, [missile[0]], list(imagenet.classnames))
    assert f"{missile[0]} (missile: 1 image)" in str(e.value)
    assert "swapped" not in str(e.value)  # the other class named "missile" is not a swapped row


def test_output_file_checks(tmp_path):
    from diffusion_classifier.noise import load_noise
    from diffusion_classifier.records import check_output_file

    assert check_output_file(tmp_path / "x.pt") == tmp_path / "x.pt" and not (tmp_path / "x.pt").exists()
    with pytest.raises(ValueError, match=r"is a folder; expected the path of a file to write"):
        check_output_file(tmp_path)
    with pytest.raises(ValueError, match=r"its folder \S+/new does not exist; create it \(mkdir -p \S+/new\) or pass "
                                         r"another --json"):
        check_output_file(tmp_path / "new" / "x.json", "--json")
    torch.save(torch.full((2, 3, 4, 4), float("inf")), tmp_path / "inf.pt")
    with pytest.raises(ValueError, match=r"holds 0 NaN and 96 infinite values \(in 2 of its 2 rows\)"):
        load_noise(tmp_path / "inf.pt")
    bank = np.random.default_rng(0).standard_normal((2, 3, 4, 4)).astype(np.float32)
    np.save(tmp_path / "bank.npy", bank)  # a bank saved with numpy.save is read as it is
    assert torch.equal(load_noise(tmp_path / "bank.npy"), torch.from_numpy(bank))


def _string_label_splits(tmp: Path, test_labels: list[str]) -> dict[str, Path]:
    """The same train and test splits saved with save_to_disk and in the hub's parquet layout; labels are strings."""
    import datasets

    feat = datasets.Features({"image": datasets.Image(), "label": datasets.Value("string")})
    img = Image.fromarray(np.full((8, 8, 3), 128, np.uint8))
    splits = {"train": ["cat", "dog", "emu"], "test": test_labels}
    made = {name: datasets.Dataset.from_dict({"image": [img] * len(v), "label": v}, features=feat)
            for name, v in splits.items()}
    datasets.DatasetDict(made).save_to_disk(str(tmp / "disk"))
    (tmp / "hub" / "data").mkdir(parents=True)
    for name, d in made.items():
        d.to_parquet(str(tmp / "hub" / "data" / f"{name}-00000-of-00001.parquet"))
    return {"disk": tmp / "disk", "hub": tmp / "hub"}


@pytest.mark.parametrize("layout", ["disk", "hub"])
def test_an_empty_split_is_named_and_the_other_splits_still_read(tmp_path, layout, monkeypatch):
    from diffusion_classifier.data.registry import get_dataset
    from diffusion_classifier.errors import InputError

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    root = _string_label_splits(tmp_path, [])[layout]
    with pytest.raises(InputError, match=rf"^split 'test' of {re.escape(str(root))} is empty \(0 rows\); it has rows "
                                         r"in train: pass --split with a split that has rows$"):
        get_dataset("hf", root, "test")
    assert get_dataset("hf", root, "train").classes == ["cat", "dog", "emu"]


@pytest.mark.parametrize("layout", ["disk", "hub"])
def test_string_labels_give_every_split_the_classes_of_all_splits(tmp_path, layout, capsys, monkeypatch):
    from diffusion_classifier.data.registry import get_dataset, num_classes

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    root = _string_label_splits(tmp_path, ["emu", "cat"])[layout]
    test, train = get_dataset("hf", root, "test"), get_dataset("hf", root, "train")
    assert test.classes == train.classes == ["cat", "dog", "emu"] and num_classes("hf", test) == 3
    assert test.targets == [2, 0]  # emu, cat: the label ids of the train split's prompts
    assert test.missing_classes == ["dog"] and "has no image of 1 of the 3 classes found over all splits: dog" in \
        capsys.readouterr().err
