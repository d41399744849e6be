"""Winoground (Thrush et al., 2022): a local copy of the data, and the text/image/group scores."""
from __future__ import annotations

import io
import json
import math
import os
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from .engine import Jobs, Scorer
from .errors import InputError, MissingError, MissingPackageError
from .images import Unreadable, UnreadableImageError, decode_rgb, header_problem
from .noise import periodic_noise_rows

HUB_URL = "https://huggingface.co/datasets/facebook/winoground"
EXAMPLE_KEYS = (
    "id", "caption_0", "caption_1", "tag", "secondary_tag", "num_main_preds", "collapsed_tag",
    "image_0", "image_1",
)
TAG_ORDER = ("Overall", "Object", "Relation", "Both")
KINDS = ("text", "image", "group")
Z95 = 1.96


def how_to_obtain(data_dir: str | os.PathLike) -> str:
    """The sentence on getting the gated data into `data_dir`, as the loader's errors say it."""
    return (f"Winoground is gated on the hub: accept the terms at {HUB_URL}, download examples.jsonl "
            f"and images.zip into {data_dir}, and pass --data_dir {data_dir}")


class WinogroundImages:
    """Reads `<name>.png` from `data_dir/images/` or from `data_dir/images.zip`; the zip is opened lazily."""

    def __init__(self, data_dir: str | os.PathLike):
        self.data_dir = Path(data_dir)
        self.folder = self.data_dir / "images"
        self.zip_path = self.data_dir / "images.zip"
        self._zip: zipfile.ZipFile | None = None
        self._members: dict[str, str] | None = None  # image name -> zip member
        if self.folder.is_dir():
            self.zip_path = None
        elif self.zip_path.is_file():
            self.folder = None
        else:
            raise MissingError(f"no Winoground images: expected a folder {self.folder} or a zip "
                                    f"{self.zip_path}; {how_to_obtain(self.data_dir)}")

    def _open_zip(self) -> zipfile.ZipFile:
        if self._zip is None:
            self._zip = zipfile.ZipFile(self.zip_path)
            members = {}
            for member in self._zip.namelist():
                parent, _, base = member.rpartition("/")
                # the hub zip stores images/<name>.png; re-zipped copies often put <name>.png at the root
                if parent in ("", "images") and base.endswith(".png"):
                    members.setdefault(base[: -len(".png")], member)
            self._members = members
        return self._zip

    def source(self, name: str) -> str:
        """Where image `name` is read from (a file path, or 'zip:member'); FileNotFoundError if absent."""
        if self.folder is not None:
            path = self.folder / f"{name}.png"
            if not path.is_file():
                raise MissingError(f"Winoground image {name!r} not found: expected file {path}")
            return str(path)
        self._open_zip()
        if name not in self._members:
            raise MissingError(f"Winoground image {name!r} not found: expected member "
                                    f"images/{name}.png or {name}.png in {self.zip_path}")
        return f"{self.zip_path}:{self._members[name]}"

    def __contains__(self, name: str) -> bool:
        try:
            self.source(name)
        except FileNotFoundError:
            return False
        return True

    def read(self, name: str) -> str | bytes:
        """Image `name` as a file path (folder) or its encoded bytes (zip), without decoding it."""
        self.source(name)  # raises a clear FileNotFoundError if it is absent
        if self.folder is not None:
            return str(self.folder / f"{name}.png")
        return self._open_zip().read(self._members[name])

    def open(self, name: str) -> Image.Image:
        """The image `name` as a loaded PIL RGB image; UnreadableImageError naming it if it cannot be decoded."""
        return decode_rgb(self.read(name), self.source(name))

    def unreadable(self, name: str) -> str | None:
        """What image `name` holds if its header cannot be read (see images.header_problem), else None."""
        return header_problem(self.read(name))

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
            self._zip = None
            self._members = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __getstate__(self):
        # a zip handle cannot cross a process boundary (DataLoader workers); reopen it there
        state = self.__dict__.copy()
        state["_zip"] = None
        state["_members"] = None
        return state


@dataclass
class WinogroundExample:
    """One Winoground example: two captions, two image names and its tags; images open lazily."""

    id: int
    caption_0: str
    caption_1: str
    tag: str
    secondary_tag: str
    num_main_preds: int
    collapsed_tag: str
    image_0: str
    image_1: str
    images: WinogroundImages | None = field(default=None, repr=False, compare=False)

    def caption(self, k: int) -> str:
        """Caption k (0 or 1)."""
        if k not in (0, 1):
            raise InputError(f"caption index must be 0 or 1, got {k!r}")
        return self.caption_1 if k else self.caption_0

    def image_name(self, k: int) -> str:
        """Name of image k (0 or 1)."""
        if k not in (0, 1):
            raise InputError(f"image index must be 0 or 1, got {k!r}")
        return self.image_1 if k else self.image_0

    def open_image(self, k: int) -> Image.Image:
        """Image k (0 or 1) as a PIL RGB image."""
        name = self.image_name(k)
        if self.images is None:
            raise InputError(f"example {self.id} has no image reader; expected one from load_winoground, found None")
        return self.images.open(name)


def load_winoground(data_dir: str | os.PathLike, limit: int | None = None) -> list[WinogroundExample]:
    """The examples of a local Winoground copy (examples.jsonl plus images/ or images.zip), in file order."""
    data_dir = Path(data_dir)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise InputError(f"limit must be a positive int or None, got {limit!r}")
    if not data_dir.is_dir():
        raise MissingError(f"Winoground data directory {data_dir} does not exist; {how_to_obtain(data_dir)}")
    jsonl = data_dir / "examples.jsonl"
    if not jsonl.is_file():
        raise MissingError(f"Winoground metadata {jsonl} not found; {how_to_obtain(data_dir)}")
    images = WinogroundImages(data_dir)

    examples = []
    with open(jsonl, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{jsonl} line {lineno}: expected a JSON object, found invalid JSON ({e.msg})") from None
            if not isinstance(record, dict):
                raise InputError(f"{jsonl} line {lineno}: expected a JSON object, found {type(record).__name__}")
            missing = [k for k in EXAMPLE_KEYS if k not in record]
            if missing:
                raise InputError(f"{jsonl} line {lineno}: missing keys {', '.join(missing)}")
            ex = WinogroundExample(**{k: record[k] for k in EXAMPLE_KEYS}, images=images)
            for k in (0, 1):
                images.source(ex.image_name(k))  # fail now, not hours into an evaluation
            examples.append(ex)
            if limit is not None and len(examples) == limit:
                break
    return examples


def find_unreadable_examples(examples: list[WinogroundExample]) -> list[Unreadable]:
    """The examples with an image whose header cannot be read, one entry per example (index = example id)."""
    bad = []
    for ex in examples:
        for k in (0, 1):
            name = ex.image_name(k)
            found = ex.images.unreadable(name) if ex.images is not None else None
            if found is not None:
                bad.append(Unreadable(int(ex.id), ex.images.source(name), found))
                break
    return bad


def _as_scores(scores) -> np.ndarray:
    """Scores as a float64 array (..., caption, image) with trailing shape (2, 2)."""
    if hasattr(scores, "detach"):  # torch tensor, possibly on GPU or in bf16
        scores = scores.detach().cpu().double().numpy()
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim < 2 or s.shape[-2:] != (2, 2):
        raise InputError(f"Winoground scores must have shape (..., 2, 2) indexed [caption, image], got {s.shape}")
    return s


def text_correct(scores) -> np.ndarray:
    """Per example: each image prefers its own caption, s[0,0] > s[1,0] and s[1,1] > s[0,1] (ties are wrong)."""
    s = _as_scores(scores)
    return (s[..., 0, 0] > s[..., 1, 0]) & (s[..., 1, 1] > s[..., 0, 1])


def image_correct(scores) -> np.ndarray:
    """Per example: each caption prefers its own image, s[0,0] > s[0,1] and s[1,1] > s[1,0] (ties are wrong)."""
    s = _as_scores(scores)
    return (s[..., 0, 0] > s[..., 0, 1]) & (s[..., 1, 1] > s[..., 1, 0])


def group_correct(scores) -> np.ndarray:
    """Per example: both text and image correct."""
    return text_correct(scores) & image_correct(scores)


def _summary(correct: np.ndarray) -> dict:
    n = int(correct.size)
    p = float(correct.mean())
    return {"score": 100.0 * p, "ci95": 100.0 * Z95 * math.sqrt(p * (1.0 - p) / n), "n": n}


def winoground_scores(scores, tags: list[str]) -> dict:
    """Text/image/group score in percent with a normal 95% interval, overall and per collapsed tag.

    scores: (N, 2, 2) indexed [example, caption, image], higher = better match; tags: N collapsed tags.
    Returns {tag: {kind: {"score", "ci95", "n"}}} for "Overall", then Object, Relation, Both, then others.
    """
    s = _as_scores(scores)
    if s.ndim != 3 or s.shape[0] == 0:
        raise InputError(f"Winoground scores must have shape (N, 2, 2) with N >= 1, got {s.shape}")
    tags = list(tags)
    if len(tags) != s.shape[0]:
        raise InputError(f"expected one tag per example ({s.shape[0]}), got {len(tags)} tags")
    correct = {"text": text_correct(s), "image": image_correct(s), "group": group_correct(s)}
    tag_arr = np.asarray(tags, dtype=object)
    present = set(tags)
    order = ["Overall"] + [t for t in TAG_ORDER[1:] if t in present]
    order += sorted(present - set(order))
    result = {}
    for tag in order:
        mask = np.ones(len(tags), dtype=bool) if tag == "Overall" else tag_arr == tag
        result[tag] = {kind: _summary(c[mask]) for kind, c in correct.items()}
    return result


def format_scores(result: dict) -> list[str]:
    """Lines like 'Overall text score: 38.5 +/- 4.8', per tag and kind, in the order of `result`."""
    return [f"{tag} {kind} score: {by_kind[kind]['score']:.1f} +/- {by_kind[kind]['ci95']:.1f}"
            for tag, by_kind in result.items() for kind in KINDS]


def normalized_image_scores(scores, uncond) -> np.ndarray:
    """Scores with each image's unconditional score removed: s_norm[..., c, i] = s[..., c, i] - u[..., i].

    With diffusion scores s = -err(c, i) and u[i] = -err("", i), this removes how easy an image is to
    denoise regardless of the caption. It changes the image score only: text comparisons are within
    one image, so a per-image shift cancels there.
    scores: (..., 2, 2) indexed [caption, image]; uncond: (..., 2) indexed [image].
    """
    s = _as_scores(scores)
    if hasattr(uncond, "detach"):
        uncond = uncond.detach().cpu().double().numpy()
    u = np.asarray(uncond, dtype=np.float64)
    if u.shape != s.shape[:-1]:
        raise InputError(f"unconditional scores must have shape {s.shape[:-1]} (one per image), got {u.shape}")
    return s - u[..., None, :]  # broadcast over captions


def _json_default(obj):
    if isinstance(obj, (np.generic, np.ndarray)):
        return obj.tolist()
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def save_json(path: str | os.PathLike, result) -> None:
    """Write `result` as JSON atomically: a temporary file in the same directory, then os.replace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2, default=_json_default)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


# ---------------------------------------------------------------- writing a local copy


def write_winoground(data_dir: str | os.PathLike, records: list[dict], images: dict[str, Image.Image],
                     zip_images: bool = False) -> Path:
    """Write a copy that load_winoground reads: examples.jsonl plus images/<name>.png (or images.zip)."""
    data_dir = Path(data_dir)
    for i, record in enumerate(records):
        missing = [k for k in EXAMPLE_KEYS if k not in record]
        if missing:
            raise InputError(f"example {i} lacks keys {', '.join(missing)}; expected all of {', '.join(EXAMPLE_KEYS)}")
        absent = [record[k] for k in ("image_0", "image_1") if record[k] not in images]
        if absent:
            raise InputError(f"example {i} names images {', '.join(absent)} that are not among the images given")
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(data_dir / "examples.jsonl", "w", encoding="utf-8") as f:
        # the loader's keys first; extra keys (provenance) are kept and ignored by load_winoground
        f.writelines(json.dumps({**{k: record[k] for k in EXAMPLE_KEYS}, **record}) + "\n" for record in records)
    if zip_images:
        with zipfile.ZipFile(data_dir / "images.zip", "w") as z:
            for name, im in images.items():
                buf = io.BytesIO()
                im.save(buf, format="PNG")
                z.writestr(f"images/{name}.png", buf.getvalue())  # the hub zip's layout
    else:
        (data_dir / "images").mkdir(exist_ok=True)
        for name, im in images.items():
            im.save(data_dir / "images" / f"{name}.png")
    return data_dir


# ---------------------------------------------------------------- diffusion scores

# conditions of one example: caption_0, caption_1 and the empty prompt (the unconditional score)
N_CONDS = 3
UNCOND = 2


def pair_jobs(timesteps: list[int], n_trials: int, randomize_noise: bool, noise_period: int,
              n_conds: int = N_CONDS, n_images: int = 2) -> Jobs:
    """Jobs for every (condition, image) pair × every (t, trial), condition-major; output reshapes to
    (n_conds, n_images, n_t, n_trials). The k-th (t, trial) is t = timesteps[k // n_trials]."""
    if n_trials < 1:
        raise InputError(f"n_trials must be >= 1, got {n_trials}")
    n = len(timesteps) * n_trials
    t = torch.as_tensor(timesteps, dtype=torch.long).repeat_interleave(n_trials)  # (n,)
    noise = periodic_noise_rows(n, noise_period, randomize_noise)  # (n,)
    cond, image = torch.meshgrid(torch.arange(n_conds), torch.arange(n_images), indexing="ij")
    pairs = n_conds * n_images
    return Jobs.build(image=image.reshape(-1).repeat_interleave(n), cond=cond.reshape(-1).repeat_interleave(n),
                      t=t.repeat(pairs), noise=noise.repeat(pairs))


def diffusion_example_scores(scorer: Scorer, latents: torch.Tensor, conds: torch.Tensor, timesteps: list[int],
                             n_trials: int = 1, randomize_noise: bool = False, noise_period: int = 32,
                             loss: str = "l2") -> dict:
    """One example's diffusion scores s(c, i) = -E_{t,ε}[err(c, i)] with the same (t, ε) for every pair.

    latents: (2, C, H, W) for image_0, image_1; conds: (3, ...) for caption_0, caption_1, "".
    Returns errors (3, 2, n_t, n_trials) float32, scores (2, 2) [caption, image] and uncond (2,)
    [image] = -mean error of the empty prompt, both float64.
    """
    if latents.shape[0] != 2 or conds.shape[0] != N_CONDS:
        raise InputError(f"expected 2 image latents and {N_CONDS} conditions (caption_0, caption_1, empty prompt), "
                         f"got {latents.shape[0]} and {conds.shape[0]}")
    jobs = pair_jobs(timesteps, n_trials, randomize_noise, noise_period)
    errors = scorer.evaluate(latents, conds, jobs, loss).float().reshape(N_CONDS, 2, len(timesteps), n_trials)
    neg_mean = -errors.double().mean(dim=(2, 3))  # (3, 2)
    return {"errors": errors, "t": torch.as_tensor(timesteps, dtype=torch.long),
            "scores": neg_mean[:2].clone(), "uncond": neg_mean[UNCOND].clone()}


# ---------------------------------------------------------------- CLIP scores

CLIP_VERSIONS = {
    "ViT-B/32": "openai/clip-vit-base-patch32",
    "ViT-B/16": "openai/clip-vit-base-patch16",
    "ViT-L/14": "openai/clip-vit-large-patch14",
    "ViT-L14": "openai/clip-vit-large-patch14",  # the reference's spelling
    "ViT-L/14@336px": "openai/clip-vit-large-patch14-336",
}
OPENCLIP_VERSION = "ViT-H-14"
OPENCLIP_PRETRAINED = "laion2b_s32b_b79k"


def resolve_clip_model(version: str = "ViT-L/14", model: str | None = None) -> str:
    """The transformers CLIP hub id or folder: `model` if given, else the id of the OpenAI CLIP `version`."""
    if model:
        return str(model)
    if version not in CLIP_VERSIONS:
        raise InputError(f"unknown CLIP version {version!r}; expected one of {', '.join(CLIP_VERSIONS)} (or --model_path)")
    return CLIP_VERSIONS[version]


def _logits_to_scores(logits_per_image: torch.Tensor) -> torch.Tensor:
    """(image, caption) logits -> (2, 2) scores indexed [caption, image], float64 on the CPU."""
    return logits_per_image.detach().float().cpu().double().T.contiguous()


def load_clip(model: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Callable:
    """A transformers CLIP model as `score(images, captions) -> (2, 2)` image-text logits [caption, image]."""
    from transformers import CLIPModel, CLIPProcessor

    device = torch.device(device)
    local = Path(model).expanduser().exists()
    if not local and not _looks_like_hub_id(model):
        raise MissingError(f"CLIP folder {model!r} does not exist; expected a transformers CLIP folder "
                                f"(config.json, weights, tokenizer and preprocessor files) or a hub id")
    try:
        clip = CLIPModel.from_pretrained(model, torch_dtype=dtype).to(device).eval().requires_grad_(False)
        processor = CLIPProcessor.from_pretrained(model)
    except (OSError, ValueError) as e:
        if local:
            first = str(e).splitlines()[0] if str(e) else ""
            raise MissingError(f"CLIP folder {model!r} lacks its parts ({type(e).__name__}: {first}); expected "
                                    f"a transformers CLIP folder with its tokenizer and image processor") from None
        raise MissingError(f"cannot load CLIP model {model!r}: it is not a local folder and not in the Hugging "
                                f"Face cache, and the hub is unreachable; on a machine with network run "
                                f"`huggingface-cli download {model}` (or pass --model_path /path/to/folder)") from None

    @torch.no_grad()
    def score(images: list[Image.Image], captions: list[str]) -> torch.Tensor:
        inputs = processor(text=list(captions), images=list(images), return_tensors="pt", padding=True, truncation=True)
        inputs = {k: v.to(device) for k, v in inputs.items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
        return _logits_to_scores(clip(**inputs).logits_per_image)  # logits_per_image: (image, caption)

    return score


def _looks_like_hub_id(model: str) -> bool:
    return not os.path.isabs(model) and not model.startswith((".", "~")) and model.count("/") == 1


def load_openclip(arch: str = OPENCLIP_VERSION, pretrained: str = OPENCLIP_PRETRAINED,
                  device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Callable:
    """An OpenCLIP model as `score(images, captions) -> (2, 2)` logits [caption, image]; `pretrained` is a tag or checkpoint."""
    try:
        import open_clip
    except ImportError:
        raise MissingPackageError("--model openclip needs the open_clip package: pip install open_clip_torch "
                          "(or pip install 'diffusion-classifier[clip]')") from None
    device = torch.device(device)
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=pretrained, device=device)
        tokenizer = open_clip.get_tokenizer(arch)
    except RuntimeError as e:  # open_clip reports unknown architectures / tags as RuntimeError
        raise InputError(f"open_clip cannot build {arch!r} with pretrained {pretrained!r}: {str(e).splitlines()[0]}") from None
    except OSError as e:  # missing checkpoint files, unreachable hub
        raise MissingError(f"cannot load OpenCLIP {arch} weights {pretrained!r} ({type(e).__name__}); the hub is "
                                f"unreachable or the file is missing: pass --model_path /path/to/checkpoint") from None
    model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)

    @torch.no_grad()
    def score(images: list[Image.Image], captions: list[str]) -> torch.Tensor:
        pixels = torch.stack([preprocess(im) for im in images]).to(device, dtype)  # (2, 3, H, W)
        tokens = tokenizer(list(captions)).to(device)
        img = model.encode_image(pixels).float()
        txt = model.encode_text(tokens).float()
        img = img / img.norm(dim=-1, keepdim=True)
        txt = txt / txt.norm(dim=-1, keepdim=True)
        return _logits_to_scores(model.logit_scale.exp().float() * img @ txt.T)  # (image, caption)

    return score


# ---------------------------------------------------------------- runs


def record_file(folder: str | os.PathLike, example_id: int) -> Path:
    """Where an example's scores are stored: <folder>/<id>.pt."""
    return Path(folder) / f"{example_id}.pt"


def run_examples(examples: list[WinogroundExample], folder: str | os.PathLike,
                 score_example: Callable[[WinogroundExample], dict], desc: str = "",
                 show_progress: bool = True, counts: dict | None = None, skip_unreadable: bool = False,
                 unreadable: list[Unreadable] | None = None) -> tuple[list[dict], int]:
    """Score the examples without a record in `folder`, saving {id, tag, scores, ...} atomically each.

    `score_example(ex)` returns at least `scores` (2, 2) [caption, image]. Returns every example's
    record (finished ones are read back, not recomputed) in example order, and how many were computed now.
    A broken record is moved aside and recomputed.
    Examples another process is scoring are waited for. `counts`, if given, receives `repaired`.
    An example whose image cannot be decoded stops the run (finished records stay) or, with
    `skip_unreadable`, is left out and appended to `unreadable`.
    """
    from tqdm.auto import tqdm

    from .images import met_message
    from .records import RecordFolder, note_unreadable

    unreadable = [] if unreadable is None else unreadable

    def problem(record) -> str | None:
        if not isinstance(record, dict) or not {"id", "tag", "scores"} <= set(record):
            return "expected a dict with keys id, tag and scores"
        if tuple(torch.as_tensor(record["scores"]).shape) != (2, 2):
            return f"expected scores of shape (2, 2), found {tuple(torch.as_tensor(record['scores']).shape)}"
        return None

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    computed = 0
    found: dict[int, dict] = {}
    with RecordFolder(folder, problem) as store:
        todo = []
        for ex in examples:
            record = store.usable(record_file(folder, ex.id))
            if record is None:
                todo.append(ex)
            else:
                found[ex.id] = record
        bar = tqdm(total=len(todo), desc=desc, disable=not show_progress, dynamic_ncols=True)
        pending = iter(todo)
        while True:
            group = store.claim_next(pending, 1, lambda e: record_file(folder, e.id))
            if not group:
                # the rest is held by other processes: wait for their records (or take over a dead one's claims)
                for ex in todo:
                    if ex.id not in found and (record := store.usable(record_file(folder, ex.id))) is not None:
                        found[ex.id] = record
                pending = iter([ex for ex in todo if ex.id not in found])
                if not any(ex.id not in found for ex in todo):
                    break
                time.sleep(1.0)
                continue
            ex = group[0]
            try:
                scored = score_example(ex)
            except UnreadableImageError as e:
                bad = Unreadable(int(ex.id), e.name, e.found)
                if not skip_unreadable:
                    raise UnreadableImageError(e.name, e.found, met_message(bad, computed, "examples")) from None
                store.claims.release(record_file(folder, ex.id))
                unreadable.append(bad)
                note_unreadable(folder, [bad])
                todo = [t for t in todo if t.id != ex.id]
                bar.update(1)
                continue
            record = {"id": int(ex.id), "tag": ex.collapsed_tag, **scored}
            assert tuple(record["scores"].shape) == (2, 2), record["scores"].shape
            store.save(record, record_file(folder, ex.id))
            found[ex.id] = record
            computed += 1
            bar.update(1)
        bar.close()
        if counts is not None:
            counts.update(repaired=store.repaired)
    left_out = {b.index for b in unreadable}
    return [found[ex.id] for ex in examples if ex.id not in left_out or ex.id in found], computed


def summarize(records: list[dict]) -> dict:
    """Text/image/group scores of saved records; with unconditional scores also the normalised ones."""
    if not records:
        raise InputError("no Winoground records to summarise; expected at least one scored example")
    scores = np.stack([_as_scores(r["scores"]) for r in records])  # (N, 2, 2)
    tags = [r["tag"] for r in records]
    summary = {"n": len(records), "scores": winoground_scores(scores, tags), "normalized": None}
    if all(r.get("uncond") is not None for r in records):
        uncond = np.stack([np.asarray(r["uncond"], dtype=np.float64) for r in records])  # (N, 2)
        summary["normalized"] = winoground_scores(normalized_image_scores(scores, uncond), tags)
    return summary


def summary_lines(summary: dict) -> list[str]:
    """format_scores lines; the normalised image and group scores follow their raw lines when present."""
    raw = format_scores(summary["scores"])
    if summary.get("normalized") is None:
        return raw
    lines = []
    for line, norm in zip(raw, format_scores(summary["normalized"])):
        lines.append(line)
        if " text score:" not in line:  # the text score cannot change: shifts within one image cancel
            lines.append(norm.replace(" score:", " score (normalized):"))
    return lines
