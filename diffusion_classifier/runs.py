"""One description of a run: the settings that change its numbers, from which its folder and its manifest follow.

A run folder is LOG_DIR/<group>/<name>: the group is the dataset's folder (the reference's
<dataset>[_<extra>]), the name joins each setting's tag in order, and the manifest (records.check_manifest)
holds every setting's values. A setting is one `Setting(values, tag)`, so a new option is added once,
with its tag ('' where the folder name does not show it, as for the prompts; the manifest still refuses a
run with another value) and its manifest entries together. The tags reproduce the reference's names
(`v2-0_1trials_5_1keep_50_500samples`) and the suffixes added since, so existing folders resume.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from .data import registry
from .data.sizes import image_size, size_name


@dataclass(frozen=True)
class Setting:
    """Manifest entries of one setting and its part of the run folder's name ('' when the name does not show it)."""

    values: dict
    tag: str


@dataclass(frozen=True)
class RunDescription:
    """A run's settings in folder-name order, and the folder of its dataset (or other group) under the log dir."""

    group: str
    settings: tuple[Setting, ...]

    @property
    def name(self) -> str:
        return "".join(s.tag for s in self.settings)

    def folder(self, log_dir: str | Path) -> Path:
        return Path(log_dir) / self.group / self.name

    @property
    def manifest(self) -> dict:
        """The settings written to (and checked against) the run folder's manifest.json."""
        out: dict = {}
        for s in self.settings:
            assert not set(s.values) & set(out), f"manifest key given twice: {set(s.values) & set(out)}"
            out.update(s.values)
        return out


def dataset_group(dataset: str, corruption: str | None = None, severity: int | None = None,
                  extra: str | None = None, root: str | Path | None = None) -> str:
    """<dataset>[_<extra>] (digits_c_<corruption>_<severity> for the corrupted digits, hf_<folder name> for a local
    Hugging Face dataset at `root`), as the reference names it."""
    name = registry.dataset_group(dataset, root, corruption=corruption, severity=severity)
    return name + (f"_{extra}" if extra else "")


def model_label(version: str | None, model: str | None) -> str:
    """The model in a folder name: --version, or the last component of the --model folder or hub id."""
    return version if model is None else Path(str(model).rstrip("/")).name


def _unless(value, default, tag: str) -> str:
    return tag if value != default else ""


def _img_size(img_size, default) -> Setting:
    """img_size in the manifest (S, or [H, W] when not square) and its tag _S or _HxW unless it is `default`."""
    size = None if img_size is None else image_size(img_size)
    default = None if default is None else image_size(default)
    value = list(size) if isinstance(size, tuple) else size
    return Setting({"img_size": value}, _unless(size, default, f"_{size_name(size)}" if size is not None else ""))


def _trials(n_trials: int) -> Setting:
    return Setting({"n_trials": n_trials}, f"_{n_trials}trials")


def _schedule(to_keep, n_samples) -> list[Setting]:
    return [Setting({"to_keep": list(to_keep)}, "_" + "_".join(map(str, to_keep)) + "keep"),
            Setting({"n_samples": list(n_samples)}, "_" + "_".join(map(str, n_samples)) + "samples")]


def _statistical(schedule: str, z: float, min_samples: int, delta: float | None, variance: str,
                 epsilon: float | None = None, spending: str = "even") -> tuple[Setting, Setting]:
    """The schedule's settings; the statistical one adds _stat_z<z> (or _stat_d<delta>) _min<m>, then its variance,
    _decay for the decaying spending of delta and _eps<epsilon> for an indifference zone (absent at their defaults,
    so older runs keep their folders and manifests)."""
    stat = schedule == "statistical"
    tag = ((f"_stat_z{z:g}" if delta is None else f"_stat_d{delta:g}") + f"_min{min_samples}") if stat else ""
    decay = stat and spending != "even"
    eps = stat and epsilon is not None
    return (Setting({"schedule": schedule, "z": z if stat else None, "min_samples": min_samples if stat else None,
                     "delta": delta}, tag),
            Setting({"variance": variance if variance != "iid" else None,
                     **({"spending": spending} if decay else {}), **({"epsilon": epsilon} if eps else {})},
                    (f"_{variance}" if stat and variance != "iid" else "") + ("_decay" if decay else "")
                    + (f"_eps{epsilon:g}" if eps else "")))


def _loss(loss: str) -> Setting:
    return Setting({"loss": loss}, _unless(loss, "l2", f"_{loss}"))


def _weights(digest: str | None) -> Setting:
    return Setting({"timestep_weights": digest}, f"_tw{digest}" if digest else "")


def _offsets(applied: dict | None) -> Setting:
    """The class offsets a schedule applies (class_offsets.ClassOffsets.setting) and their tag _co<digest>."""
    digest = hashlib.sha1(json.dumps(applied, sort_keys=True).encode()).hexdigest()[:8] if applied else None
    return Setting({"class_offsets": applied} if applied else {}, f"_co{digest}" if digest else "")


def zero_shot_run(*, version: str | None, model: str | None, source: str, dataset: str, split: str,
                  img_size: int | tuple[int, int], n_trials: int, to_keep, n_samples, loss: str, interpolation: str,
                  noise: str, prompts: list, subset: str | None, corruption: str | None, severity: int | None,
                  schedule: str, z: float, min_samples: int, delta: float | None, variance: str,
                  timestep_weights: str | None, objective,
                  error_space: str | None, flow_grid: str, no_t5: bool, guidance: float | None,
                  extra: str | None = None, root: str | Path | None = None, data: dict | None = None,
                  epsilon: float | None = None, spending: str = "even",
                  class_offsets: dict | None = None) -> RunDescription:
    """eval_prob_adaptive.py's run: v<model>_<n>trials_<keeps>keep_<samples>samples and the suffixes of its options.

    `objective` is the one scored with (its prediction type and error space); `error_space` the flag as given.
    Settings of non-default objectives are absent for ε-models, so older runs still resume. `root` is the dataset
    root (it names a Hugging Face dataset's group) and `data` the manifest entries that pick its data (its columns).
    """
    flow = objective.prediction_type == "flow"
    objective_values = {}
    if objective.prediction_type != "epsilon":
        objective_values.update(objective=objective.prediction_type, error_space=objective.error_space)
        if flow:
            objective_values["flow_grid"] = flow_grid
    elif error_space:
        objective_values["error_space"] = objective.error_space
    settings = [
        Setting({"model": source}, f"v{model_label(version, model)}"),
        _trials(n_trials),
        *_schedule(to_keep, n_samples),
        Setting({"interpolation": interpolation}, _unless(interpolation, "bicubic", f"_{interpolation}")),
        _loss(loss),
        _img_size(img_size, 512),
        *_statistical(schedule, z, min_samples, delta, variance, epsilon, spending),
        _weights(timestep_weights),
        _offsets(class_offsets),
        Setting(objective_values, (f"_err{error_space}" if error_space is not None else "")
                + (f"_grid{flow_grid}" if flow and flow_grid != "timesteps" else "")),
        Setting({"guidance": guidance} if guidance is not None else {}, f"_g{guidance}" if guidance is not None else ""),
        Setting({"no_t5": True} if no_t5 else {}, "_not5" if no_t5 else ""),
        Setting({"dataset": dataset, "split": split, "noise": noise, "prompts": prompts, "subset": subset,
                 "corruption": corruption, "severity": severity}, ""),
        Setting(dict(data or {}), ""),
    ]
    return RunDescription(dataset_group(dataset, corruption, severity, extra, root), tuple(settings))


def _class_model(source: str, vae: str | None, dataset: str, split: str, img_size: int, noise: str,
                 corruption: str | None, severity: int | None) -> Setting:
    # --subset_path and --imgs_to_eval only pick images, so a run can grow
    return Setting({"model": source, "vae": vae, "dataset": dataset, "split": split, "img_size": img_size,
                    "noise": noise, "corruption": corruption, "severity": severity}, model_label(None, source))


def per_class_run(*, source: str, vae: str | None, dataset: str, split: str, img_size: int, n_trials: int, noise: str,
                  corruption: str | None, severity: int | None, t_interval: int, kind: str, randomize_noise: bool,
                  batch_size: int, extra: str | None = None, root: str | Path | None = None,
                  data: dict | None = None) -> RunDescription:
    """eval_prob_dit.py's per-class run: <model>_<t_interval>int_<n>trials[_randnoise][_<kind>] (classes in subfolders)."""
    settings = (
        _class_model(source, vae, dataset, split, img_size, noise, corruption, severity),
        Setting({"t_interval": t_interval}, f"_{t_interval}int"),
        _trials(n_trials),
        # without --randomize_noise a job's noise row depends on the batch size
        Setting({"randomize_noise": randomize_noise, "batch_size": None if randomize_noise else batch_size},
                "_randnoise" if randomize_noise else ""),
        Setting({"kind": kind}, _unless(kind, "l2", f"_{kind}")),
        Setting(dict(data or {}), ""),
    )
    return RunDescription(dataset_group(dataset, corruption, severity, extra, root), settings)


def class_adaptive_run(*, source: str, vae: str | None, dataset: str, split: str, img_size: int, n_trials: int,
                       noise: str, corruption: str | None, severity: int | None, to_keep, n_samples, loss: str,
                       schedule: str, z: float, min_samples: int, delta: float | None, variance: str,
                       null_normalize: bool, classes: list[int], timestep_weights: str | None,
                       extra: str | None = None, root: str | Path | None = None,
                       data: dict | None = None, epsilon: float | None = None, spending: str = "even",
                       class_offsets: dict | None = None) -> RunDescription:
    """eval_prob_dit.py's adaptive run: <model>_<n>trials_<keeps>keep_<samples>samples[_<loss>][_stat..][_null].."""
    statistical, variance_setting = _statistical(schedule, z, min_samples, delta, variance, epsilon, spending)
    settings = (
        _class_model(source, vae, dataset, split, img_size, noise, corruption, severity),
        _trials(n_trials),
        *_schedule(to_keep, n_samples),
        _loss(loss),
        statistical,
        Setting({"null_normalize": null_normalize}, "_null" if null_normalize else ""),
        variance_setting,
        _weights(timestep_weights),
        _offsets(class_offsets),
        Setting({"classes": classes}, ""),
        Setting(dict(data or {}), ""),
    )
    return RunDescription(dataset_group(dataset, corruption, severity, extra, root), settings)


def _baseline(model: str, source: str, version: str, label: str) -> Setting:
    """A contrastive baseline's one setting (CLIP, OpenCLIP): <model>_<version>."""
    return Setting({"model": model, "source": source, "version": version}, f"{model}_{label.replace('/', '_')}")


def _candidate_scoring(n_trials: int, to_keep, n_samples, loss: str, schedule: str, z: float, min_samples: int,
                       delta: float | None, variance: str, epsilon: float | None, spending: str,
                       img_size: int | tuple[int, int] | None, native_size: int | tuple[int, int] | None,
                       interpolation: str, timestep_weights: str | None = None) -> list[Setting]:
    """The settings of a diffusion model scoring an item's candidates (grounding, compositional), in name order."""
    statistical, variance_setting = _statistical(schedule, z, min_samples, delta, variance, epsilon, spending)
    return [_trials(n_trials), *_schedule(to_keep, n_samples), _loss(loss), statistical, variance_setting,
            _weights(timestep_weights), _img_size(img_size, native_size),
            Setting({"interpolation": interpolation}, _unless(interpolation, "bicubic", f"_{interpolation}"))]


def winoground_run(*, model: str, version: str, model_path: str | None, source: str, extra: str | None = None,
                   img_size: int | tuple[int, int] | None = None, native_size: int | tuple[int, int] | None = None,
                   interpolation: str = "bilinear",
                   t_interval: int = 5, T: int = 1000, n_trials: int = 1, randomize_noise: bool = False,
                   noise: str | None = None, noise_period: int | None = None) -> RunDescription:
    """run_winoground.py's run: sd_v<version>_t<interval>_<n>trials[_randnoise][...] for SD, <model>_<version> for CLIP.

    The diffusion settings (img_size ... noise_period) are those of `model` 'sd' only.
    """
    group = "winoground" + (f"_{extra}" if extra else "")
    label = model_label(version, model_path)
    if model != "sd":
        return RunDescription(group, (_baseline(model, source, version, label),))
    settings = (
        Setting({"model": "sd", "source": source}, f"sd_v{label}"),
        Setting({"t_interval": t_interval, "T": T}, f"_t{t_interval}"),
        _trials(n_trials),
        Setting({"randomize_noise": randomize_noise, "noise_period": noise_period}, "_randnoise" if randomize_noise else ""),
        Setting({"interpolation": interpolation}, _unless(interpolation, "bilinear", f"_{interpolation}")),
        _img_size(img_size, native_size),
        Setting({"noise": noise, "loss": "l2"}, ""),
    )
    return RunDescription(group, settings)


def grounding_run(*, model: str, version: str | None, model_path: str | None, source: str, dataset: str,
                  data: dict, split: str, proposals: str, region: str = "crop", template: str = "{}",
                  score: str = "null", n_trials: int = 1, to_keep=(1,), n_samples=(50,), loss: str = "l2",
                  schedule: str = "reference", z: float = 3.0, min_samples: int = 10, delta: float | None = None,
                  variance: str = "iid", epsilon: float | None = None, spending: str = "even",
                  img_size: int | tuple[int, int] | None = None, native_size: int | tuple[int, int] | None = None,
                  interpolation: str = "bicubic", timestep_weights: str | None = None,
                  noise: str | None = None, extra: str | None = None) -> RunDescription:
    """run_refcoco.py's run: <group> = <dataset>[_<split_by>]_<split>[_<extra>] (reclip_<file>, hf_<folder>);
    name v<model>_<region>_<score>_<n>trials_<keeps>keep_<samples>samples[...] for diffusion models,
    <model>_<version> for CLIP. `data` are the manifest entries that pick the queries (files, split_by);
    `proposals` is 'gt' or the detections file's digest (tagged _det<digest>)."""
    group = "_".join(str(p) for p in (dataset, data.get("split_by"), split, extra) if p)
    det = Setting({"proposals": proposals}, "" if proposals == "gt" else f"_det{proposals[:8]}")
    picks = Setting({"dataset": dataset, "split": split, "template": template, **data}, "")
    label = model_label(version, model_path)
    if model != "sd":
        return RunDescription(group, (_baseline(model, source, version, label), det, picks))
    settings = (
        Setting({"model": "sd", "source": source}, f"v{label}"),
        Setting({"region": region}, f"_{region}"),
        Setting({"score": score}, f"_{score}"),
        *_candidate_scoring(n_trials, to_keep, n_samples, loss, schedule, z, min_samples, delta, variance, epsilon,
                            spending, img_size, native_size, interpolation, timestep_weights),
        det,
        Setting({"noise": noise}, ""),
        picks,
    )
    return RunDescription(group, settings)


def compositional_run(*, model: str, version: str | None, model_path: str | None, source: str, dataset: str,
                      data: dict, n_trials: int = 1, to_keep=(1,), n_samples=(100,), loss: str = "l2",
                      schedule: str = "reference", z: float = 3.0, min_samples: int = 10, delta: float | None = None,
                      variance: str = "iid", epsilon: float | None = None, spending: str = "even",
                      img_size: int | tuple[int, int] | None = None, native_size: int | tuple[int, int] | None = None,
                      interpolation: str = "bicubic", timestep_weights: str | None = None,
                      noise: str | None = None, extra: str | None = None) -> RunDescription:
    """run_compositional.py's run: <group> = <dataset>[_<extra>] (e.g. sugarcrepe_add_att, jsonl_<file>);
    name v<model>_<n>trials_<keeps>keep_<samples>samples[...] for diffusion models, <model>_<version> for CLIP.
    `data` are the manifest entries that pick the items (files, split, columns)."""
    group = dataset + (f"_{extra}" if extra else "")
    picks = Setting({"dataset": dataset, **data}, "")
    label = model_label(version, model_path)
    if model != "sd":
        return RunDescription(group, (_baseline(model, source, version, label), picks))
    settings = (
        Setting({"model": "sd", "source": source}, f"v{label}"),
        *_candidate_scoring(n_trials, to_keep, n_samples, loss, schedule, z, min_samples, delta, variance, epsilon,
                            spending, img_size, native_size, interpolation, timestep_weights),
        Setting({"noise": noise}, ""),
        picks,
    )
    return RunDescription(group, settings)
