"""Synthetic referring-expression scenes: small grey items on a black canvas, written in the three layouts
run_refcoco.py reads (the refer release, the ReCLIP jsonl, a local Hugging Face dataset)."""
from __future__ import annotations

import io
import json
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

MAX_IOU = 0.2  # items may overlap a little, as objects do


@dataclass
class Scene:
    image_id: int
    image: Image.Image
    objects: list  # [(ann_id, [x, y, w, h], label)]
    referred: int  # the ann_id the expression names


def tight_box(mask: np.ndarray, x0: int, y0: int) -> list[float] | None:
    ys, xs = np.nonzero(mask)
    if not len(xs):
        return None
    return [float(x0 + xs.min()), float(y0 + ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


def _iou(a, b) -> float:
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def make_scenes(items: np.ndarray, labels: np.ndarray, n_scenes: int, n_items: int, canvas: int = 64,
                sizes: tuple[int, int] = (20, 32), seed: int = 0, first_id: int = 1) -> list[Scene]:
    """n_scenes scenes of n_items items of distinct classes (uint8 (N, h, w) grey images), pasted at random
    positions and sizes (pixel-wise max where they overlap); one referred item per scene, at random."""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    by_class = {c: np.flatnonzero(labels == c) for c in classes}
    scenes = []
    for s in range(n_scenes):
        for _ in range(1000):
            picked = rng.choice(classes, n_items, replace=False)
            canvas_px = np.zeros((canvas, canvas), np.uint8)
            objects, ok = [], True
            for j, c in enumerate(picked):
                item = items[rng.choice(by_class[c])]
                size = int(rng.integers(sizes[0], sizes[1] + 1))
                pix = np.asarray(Image.fromarray(item).resize((size, size), Image.BICUBIC))
                x0, y0 = (int(v) for v in rng.integers(0, canvas - size + 1, 2))
                box = tight_box(pix > 0, x0, y0)
                if box is None or any(_iou(box, b) > MAX_IOU for _, b, _ in objects):
                    ok = False
                    break
                region = canvas_px[y0:y0 + size, x0:x0 + size]
                np.maximum(region, pix, out=region)
                objects.append((first_id + s * 10 + j, box, int(c)))
            if ok:
                break
        else:
            raise RuntimeError(f"cannot place {n_items} items of {sizes} px on a {canvas} px canvas")
        image = Image.fromarray(canvas_px).convert("RGB")
        scenes.append(Scene(first_id + s, image, objects, objects[int(rng.integers(n_items))][0]))
    return scenes


def expression(scene: Scene, words) -> str:
    label = next(lab for aid, _, lab in scene.objects if aid == scene.referred)
    return f"the {words[label]}"


def file_name(scene: Scene) -> str:
    return f"COCO_train2014_{scene.image_id:012d}.png"


def write_images(folder: Path, scenes: list[Scene]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for s in scenes:
        s.image.save(folder / file_name(s))


def write_refer(root: Path, dataset: str, split: str, scenes: list[Scene], words, split_by: str = "unc") -> Path:
    """DIR/<dataset>/refs(<split_by>).p, instances.json and DIR/images/mscoco/images/train2014/*.png."""
    folder = Path(root) / dataset
    folder.mkdir(parents=True, exist_ok=True)
    write_images(Path(root) / "images" / "mscoco" / "images" / "train2014", scenes)
    images = [{"id": s.image_id, "file_name": file_name(s), "width": s.image.width, "height": s.image.height}
              for s in scenes]
    anns = [{"id": aid, "image_id": s.image_id, "bbox": box, "category_id": lab + 1, "area": box[2] * box[3]}
            for s in scenes for aid, box, lab in s.objects]
    cats = [{"id": k + 1, "name": w} for k, w in enumerate(words)]
    (folder / "instances.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    refs = []
    for s in scenes:
        label = next(lab for aid, _, lab in s.objects if aid == s.referred)
        refs.append({"ref_id": s.image_id, "ann_id": s.referred, "image_id": s.image_id, "split": split,
                     "category_id": label + 1, "file_name": file_name(s)[:-4] + f"_{s.referred}.png",
                     "sent_ids": [s.referred * 100],
                     "sentences": [{"sent_id": s.referred * 100, "raw": expression(s, words), "sent": expression(s, words)}]})
    with open(folder / f"refs({split_by}).p", "wb") as f:
        pickle.dump(refs, f)
    return folder


def write_jsonl(path: Path, image_root: Path, scenes: list[Scene], words, split: str | None = None) -> Path:
    """ReCLIP's jsonl: file_name with a trailing _<ann id> (the image itself has none), image_id, ann_id, anns, sentences."""
    write_images(Path(image_root), scenes)
    with open(path, "w") as f:
        for s in scenes:
            label = next(lab for aid, _, lab in s.objects if aid == s.referred)
            line = {"file_name": file_name(s)[:-4] + f"_{s.referred}.png", "image_id": s.image_id,
                    "ann_id": s.referred, "anns": [{"id": aid, "bbox": box} for aid, box, _ in s.objects],
                    "sentences": [{"raw": expression(s, words), "sent_id": s.referred * 100}],
                    "category": words[label], **({"split": split} if split else {})}
            f.write(json.dumps(line) + "\n")
    return Path(path)


def write_hf(root: Path, split: str, scenes: list[Scene], words, proposals_path: Path) -> Path:
    """A save_to_disk DatasetDict in lmms-lab/RefCOCO's columns (image, answer, bbox, file_name, question_id) and a
    proposals file holding every item's box (the rows carry the gold box only)."""
    import datasets

    rows = {"question_id": [], "image": [], "answer": [], "bbox": [], "file_name": [], "image_id": []}
    for s in scenes:
        buf = io.BytesIO()
        s.image.save(buf, format="PNG")
        rows["question_id"].append(str(s.referred * 100))
        rows["image"].append({"bytes": buf.getvalue(), "path": file_name(s)})
        rows["answer"].append([expression(s, words)])
        rows["bbox"].append(next(box for aid, box, _ in s.objects if aid == s.referred))
        rows["file_name"].append(file_name(s))
        rows["image_id"].append(s.image_id)
    features = datasets.Features({"question_id": datasets.Value("string"), "image": datasets.Image(),
                                  "answer": datasets.Sequence(datasets.Value("string")),
                                  "bbox": datasets.Sequence(datasets.Value("float64")),
                                  "file_name": datasets.Value("string"), "image_id": datasets.Value("int64")})
    datasets.DatasetDict({split: datasets.Dataset.from_dict(rows, features=features)}).save_to_disk(str(root))
    Path(proposals_path).write_text(json.dumps({str(s.image_id): [box for _, box, _ in s.objects] for s in scenes}))
    return Path(root)
