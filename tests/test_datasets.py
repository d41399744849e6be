"""Datasets: labels line up with the prompts' classidx, missing data gives a clear error, transforms are exact."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion_classifier.data.datasets import IMAGENET_WNIDS, RemappedLabels, align_labels, imagenet_a_indices, objectnet_imagenet_indices
from diffusion_classifier.data.digits import DigitsDataset
from diffusion_classifier.data.prompts import dataset_prompts
from diffusion_classifier.data.registry import DATASETS, get_dataset, num_classes
from diffusion_classifier.data.subsets import subset_indices
from diffusion_classifier.data.transforms import adm_center_crop, dit_transform, sd_transform


def _image_folder(root, classes, per_class=2, size=(6, 4)):
    """Folders of tiny images; pixel value encodes (class position, image number)."""
    for k, c in enumerate(classes):
        (root / c).mkdir(parents=True)
        for j in range(per_class):
            Image.new("RGB", size, (10 * k, j, 0)).save(root / c / f"img{j}.png")


def _labels(ds):
    return [ds[i][1] for i in range(len(ds))]


def test_unknown_dataset():
    with pytest.raises(ValueError, match=r"unknown dataset 'cifar11'; known: pets, flowers, .*digits"):
        get_dataset("cifar11", "/nonexistent", "test")


@pytest.mark.parametrize("with_split", [True, False])
def test_imagefolder_sorted_classes(tmp_path, with_split):
    base = tmp_path / "test" if with_split else tmp_path
    _image_folder(base, ["zebra", "ant", "cow"])
    ds = get_dataset("imagefolder", tmp_path, "test")
    assert ds.classes == ["ant", "cow", "zebra"]
    assert _labels(ds) == [0, 0, 1, 1, 2, 2]
    img, label = ds[4]
    assert img.getpixel((0, 0)) == (0, 0, 0) and label == 2  # "zebra" was written first, as class position 0


def test_imagefolder_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"imagefolder data not found at {tmp_path}"):
        get_dataset("imagefolder", tmp_path, "test")


def test_imagefolder_skips_hidden_entries_keeps_empty_classes_and_turns_photos_upright(tmp_path):
    """.ipynb_checkpoints/, ._x.png (macOS), .DS_Store are no classes or images; an empty class folder keeps its label."""
    from diffusion_classifier.errors import MissingError

    _image_folder(tmp_path, ["cat", "dog"], per_class=1)
    (tmp_path / "emu").mkdir()
    (tmp_path / ".ipynb_checkpoints").mkdir()
    Image.new("RGB", (6, 4)).save(tmp_path / ".ipynb_checkpoints" / "x.png")
    (tmp_path / "cat" / "._img0.png").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X")
    (tmp_path / "cat" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (tmp_path / "dog" / ".hidden").mkdir()
    Image.new("RGB", (6, 4)).save(tmp_path / "dog" / ".hidden" / "y.png")
    img = Image.new("RGB", (4, 6), (0, 0, 0))  # stored sideways: the camera's EXIF orientation 6 turns it upright
    img.putpixel((0, 0), (255, 255, 255))
    exif = Image.Exif()
    exif[0x0112] = 6
    img.save(tmp_path / "emu" / "photo.jpg", exif=exif, quality=100)
    ds = get_dataset("imagefolder", tmp_path, "test")
    assert ds.classes == ["cat", "dog", "emu"] and _labels(ds) == [0, 1, 2]
    assert [s[0].split("/")[-1] for s in ds.samples] == ["img0.png", "img0.png", "photo.jpg"]
    upright = ds[2][0]
    assert upright.size == (6, 4) and upright.getpixel((5, 0))[0] > 200  # the white corner turned with the photo
    empty = tmp_path / "empty"
    (empty / "cat").mkdir(parents=True)
    with pytest.raises(MissingError, match="no images .* in the class folders cat"):
        get_dataset("imagefolder", empty, "test")


def test_imagefolder_split_folders_never_become_classes(tmp_path):
    """DIR/train, DIR/test and no DIR/val: --split val used to read DIR itself, with 'test' and 'train' as classes."""
    from diffusion_classifier.errors import MissingError

    for split in ("train", "test"):
        _image_folder(tmp_path / split, ["cat", "dog"], per_class=1)
    with pytest.raises(MissingError, match=r"split 'val' not found: .* has no folder val/ but has the split "
                                           r"folder\(s\) test, train; pass --split test"):
        get_dataset("imagefolder", tmp_path, "val")
    assert get_dataset("imagefolder", tmp_path, "test").classes == ["cat", "dog"]
    plain = tmp_path / "plain"  # a class that happens to be called 'train' beside others is a class
    _image_folder(plain, ["bus", "train"], per_class=1)
    assert get_dataset("imagefolder", plain, "test").classes == ["bus", "train"]


def test_a_split_folder_in_other_case_is_the_split_and_a_dangling_link_does_not_break_the_digest(tmp_path):
    from diffusion_classifier.data.datasets import images_digest

    for split in ("Train", "Test"):
        _image_folder(tmp_path / split, ["cat", "dog"], per_class=1)
    dataset = get_dataset("imagefolder", tmp_path, "train")
    assert dataset.classes == ["cat", "dog"] and all("/Train/" in f for f, _ in dataset.samples)
    (tmp_path / "Train" / "dog" / "gone.png").symlink_to(tmp_path / "nowhere.png")  # left out by --skip_unreadable
    digest = images_digest(get_dataset("imagefolder", tmp_path, "train"))["images"]
    assert digest != images_digest(dataset)["images"]


def test_an_image_folder_digest_follows_its_files_not_its_place(tmp_path):
    from diffusion_classifier.data.datasets import images_digest

    _image_folder(tmp_path / "a", ["cat", "dog"])
    _image_folder(tmp_path / "b", ["cat", "dog"])
    Image.new("RGB", (9, 9)).save(tmp_path / "b" / "dog" / "img1.png")  # same names, another image
    digest = lambda root: images_digest(get_dataset("imagefolder", root, "test"))  # noqa: E731
    assert digest(tmp_path / "a") != digest(tmp_path / "b")
    _image_folder(tmp_path / "c", ["cat", "dog"])  # same names and sizes, other bytes
    raw = bytearray((tmp_path / "c" / "cat" / "img0.png").read_bytes())
    raw[-20] ^= 1
    (tmp_path / "c" / "cat" / "img0.png").write_bytes(bytes(raw))
    assert digest(tmp_path / "c") != digest(tmp_path / "a")
    import shutil
    shutil.copytree(tmp_path / "a", tmp_path / "moved")
    assert digest(tmp_path / "moved") == digest(tmp_path / "a") and set(digest(tmp_path / "a")) == {"images"}
    assert images_digest(DigitsDataset("test")) == {}


def test_digits_labels_match_prompts():
    ds = get_dataset("digits", "/unused", "test", transform=None)
    ref = DigitsDataset("test")
    assert _labels(ds) == ref.targets
    assert sorted(set(ref.targets)) == list(range(10))
    table = dataset_prompts("digits")
    assert table.classidx == list(range(10))
    assert table.classnames == list(ds.classes)


@pytest.mark.parametrize("name, cls", [("cifar10", "CIFAR10"), ("pets", "OxfordIIITPet"), ("mnist", "MNIST"),
                                       ("food", "Food101"), ("eurosat", "EuroSAT"), ("cifar100", "CIFAR100"),
                                       ("stl10", "STL10"), ("flowers", "Flowers102")])
def test_torchvision_missing_data(tmp_path, name, cls):
    with pytest.raises(FileNotFoundError) as e:
        get_dataset(name, tmp_path, "test")
    msg = str(e.value)
    assert msg.startswith(f"{name} data not found at {tmp_path}/")
    assert f"torchvision.datasets.{cls}(DIR" in msg and "DATASET_ROOT" in msg and "\n" not in msg


def test_caltech_missing_data_creates_nothing(tmp_path):
    with pytest.raises(FileNotFoundError, match="caltech101/101_ObjectCategories"):
        get_dataset("caltech101", tmp_path, "test")
    assert list(tmp_path.iterdir()) == []


def test_bad_split():
    with pytest.raises(ValueError, match="pets split must be one of train, test, got 'val'"):
        get_dataset("pets", "/nonexistent", "val")


def test_imagenet_missing_names_layout(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        get_dataset("imagenet", tmp_path, "test")  # 'test' reads the val folder
    assert str(e.value).startswith(f"imagenet data not found at {tmp_path / 'imagenet' / 'val'}:")
    assert "<wnid>" in str(e.value)


def test_imagenet_labels_are_wnid_positions(tmp_path):
    wnids = [IMAGENET_WNIDS[5], IMAGENET_WNIDS[999], IMAGENET_WNIDS[0]]
    _image_folder(tmp_path / "imagenet" / "val", wnids, per_class=1)
    ds = get_dataset("imagenet", tmp_path, "val")
    assert _labels(ds) == [0, 5, 999]  # a partial copy keeps the 1000-class labels
    assert ds.classes == IMAGENET_WNIDS


def test_imagenetv2_label_is_folder_number(tmp_path):
    root = tmp_path / "imagenetv2-matched-frequency-format-val"
    folders = ["0", "1", "10", "2"]
    _image_folder(root, folders, per_class=1)
    ds = get_dataset("imagenetv2", tmp_path, "test")
    # the red value of each image says which folder it was written to
    pairs = sorted((folders[img.getpixel((0, 0))[0] // 10], label) for img, label in (ds[i] for i in range(len(ds))))
    assert pairs == [("0", 0), ("1", 1), ("10", 10), ("2", 2)]  # not the sorted-string positions 0, 1, 2, 3


def test_imagenetv2_rejects_other_folders(tmp_path):
    _image_folder(tmp_path / "imagenetv2-matched-frequency-format-val", ["0", "n01440764"], per_class=1)
    with pytest.raises(ValueError, match="unexpected class folder"):
        get_dataset("imagenetv2", tmp_path, "test")


def test_imagenet_a_labels(tmp_path):
    idx = imagenet_a_indices()
    assert len(idx) == 200 and idx == sorted(idx) and idx[0] == 6
    wnids = [IMAGENET_WNIDS[idx[199]], IMAGENET_WNIDS[idx[0]], IMAGENET_WNIDS[idx[17]]]
    _image_folder(tmp_path / "imagenet-a", wnids, per_class=1)
    ds = get_dataset("imagenetA", tmp_path, "test")
    assert _labels(ds) == [0, 17, 199]
    assert len(ds.classes) == 200 and ds.classes[17] == wnids[2]
    assert num_classes("imagenetA") == 200 == len(dataset_prompts("imagenetA"))


def test_objectnet_uses_mapped_folders_only(tmp_path):
    classes = dataset_prompts("objectnet").classnames
    assert classes[0] == "alarm_clock" and classes[112] == "wok"
    _image_folder(tmp_path / "objectnet" / "images", ["wok", "air_freshener", "alarm_clock"], per_class=2)
    ds = get_dataset("objectnet", tmp_path, "test")
    assert _labels(ds) == [0, 0, 112, 112]  # air_freshener is not an ImageNet class: skipped
    assert ds.classes == list(classes)
    assert num_classes("objectnet") == 113


def test_objectnet_imagenet_map():
    m = objectnet_imagenet_indices()
    assert len(m) == 113
    flat = [i for ids in m for i in ids]
    assert len(flat) == len(set(flat)) == 125
    assert m[0] == [409, 530]  # alarm clock: analog clock, digital clock


def test_align_labels_remaps_by_name():
    class Fake(torch.utils.data.Dataset):
        classes = ["Truck", "Airplane", "Automobile", "Bird", "Cat", "Deer", "Dog", "Frog", "Horse", "Ship"]

        def __len__(self):
            return 10

        def __getitem__(self, i):
            return None, i

    ds = align_labels(Fake(), Fake.classes, "cifar10")
    assert isinstance(ds, RemappedLabels)
    assert _labels(ds) == [9, 0, 1, 2, 3, 4, 5, 6, 7, 8]
    same = Fake()
    assert align_labels(same, dataset_prompts("cifar10").classnames, "cifar10") is same
    with pytest.raises(ValueError, match="unmatched: Cow"):
        align_labels(same, ["Cow"] + Fake.classes[1:], "cifar10")


def test_num_classes():
    assert [num_classes(n) for n in ["pets", "flowers", "food", "aircraft", "imagenet", "cifar100", "digits"]] == \
        [37, 102, 101, 100, 1000, 100, 10]
    for name in ("imagefolder", "hf"):
        with pytest.raises(ValueError, match=f"{name} has no fixed class count"):
            num_classes(name)
    assert num_classes("imagenetR") == 1000  # labels are ImageNet-1k indices; its prompts come from the copy on disk
    for name in set(DATASETS) - {"imagefolder", "hf", "imagenetR"}:
        assert num_classes(name) == len(set(dataset_prompts(name).classidx)), name


def test_pets_torchvision_labels_match_prompts(tmp_path):
    names = dataset_prompts("pets").classnames
    base = tmp_path / "oxford-iiit-pet"
    (base / "images").mkdir(parents=True)
    (base / "annotations").mkdir()
    lines = []
    for k in reversed(range(37)):  # file order must not matter: class ids decide the labels
        image_id = names[k].replace(" ", "_") + "_1"
        Image.new("RGB", (4, 4), (k, 0, 0)).save(base / "images" / f"{image_id}.jpg")
        lines.append(f"{image_id} {k + 1} 1 1")
    (base / "annotations" / "test.txt").write_text("\n".join(lines) + "\n")
    ds = get_dataset("pets", tmp_path, "test")
    assert [label for _, label in (ds[i] for i in range(len(ds)))] == list(reversed(range(37)))
    assert [c.lower() for c in ds.classes] == names


def test_pets_split_file_cut_short_is_one_line(tmp_path):
    """torchvision keeps no checksum of Pets' split file: a line cut short is an InputError naming the copy and what
    torchvision read, not a ValueError traceback."""
    from diffusion_classifier.errors import InputError

    base = tmp_path / "oxford-iiit-pet"
    (base / "images").mkdir(parents=True)
    (base / "annotations").mkdir()
    Image.new("RGB", (4, 4)).save(base / "images" / "Abyssinian_1.jpg")
    (base / "annotations" / "test.txt").write_text("Abyssinian_1 1 1 1\nAbyssinian_2 x")
    with pytest.raises(InputError, match=r"pets data at .* cannot be read by torchvision\.datasets\.OxfordIIITPet "
                                         r"\((ValueError|IndexError): .*\); expected an intact copy") as e:
        get_dataset("pets", tmp_path, "test")
    assert "\n" not in str(e.value)


def test_eurosat_torchvision_labels_match_prompts(tmp_path):
    table = dataset_prompts("eurosat")
    _image_folder(tmp_path / "eurosat" / "2750", table.classnames[::-1], per_class=1)
    ds = get_dataset("eurosat", tmp_path, "test")
    assert [table.classnames[label] for label in _labels(ds)] == [ds.samples[i][0].split("/")[-2] for i in range(10)]
    assert _labels(ds) == list(range(10))


def _reference_adm_crop(img, size):
    """The same recipe written independently: BOX halving, bicubic rescale, PIL box crop."""
    w, h = img.size
    while min(w, h) >= 2 * size:
        w, h = w // 2, h // 2
        img = img.resize((w, h), Image.BOX)
    s = size / min(w, h)
    w, h = round(w * s), round(h * s)
    img = img.resize((w, h), Image.BICUBIC)
    left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))


@pytest.mark.parametrize("wh, size", [((300, 200), 64), ((33, 70), 16), ((16, 16), 16), ((10, 7), 8)])
def test_adm_center_crop(wh, size):
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (wh[1], wh[0], 3), dtype=np.uint8))
    out = adm_center_crop(img, size)
    assert out.size == (size, size)
    assert np.array_equal(np.asarray(out), np.asarray(_reference_adm_crop(img, size)))


def test_dit_transform():
    x = dit_transform(16)(Image.new("L", (40, 24), 255))
    assert x.shape == (3, 16, 16)
    assert torch.allclose(x, torch.ones_like(x))


def test_sd_transform_range_and_shape():
    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 256, (30, 50), dtype=np.uint8), mode="L")
    x = sd_transform(16)(img)
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1 and x.min() < -0.5 and x.max() > 0.5
    black = sd_transform(8, "bilinear")(Image.new("RGB", (8, 8)))
    assert torch.equal(black, -torch.ones(3, 8, 8))
    with pytest.raises(ValueError, match="interpolation must be one of bicubic, bilinear, lanczos, got 'nearest'"):
        sd_transform(8, "nearest")


def test_subset_indices(tmp_path):
    assert subset_indices(4) == [0, 1, 2, 3]
    np.save(tmp_path / "ok.npy", np.array([3, 0, 2]))
    assert subset_indices(4, tmp_path / "ok.npy") == [3, 0, 2]
    np.save(tmp_path / "big.npy", np.array([1, 4]))
    with pytest.raises(ValueError, match=r"indices must lie in 0\.\.3 for a dataset of 4 images, found 1\.\.4"):
        subset_indices(4, tmp_path / "big.npy")
    np.save(tmp_path / "f.npy", np.array([0.0, 3.0]))  # floats holding integers are those integers
    assert subset_indices(4, tmp_path / "f.npy") == [0, 3]
    np.save(tmp_path / "h.npy", np.array([0.5, 1.0]))
    with pytest.raises(ValueError, match="expected a 1-D integer array"):
        subset_indices(4, tmp_path / "h.npy")
    # a text file of indices: one a line, or separated by spaces or commas
    (tmp_path / "a.txt").write_text("2\n0\n\n3\n")
    (tmp_path / "b.csv").write_text("\ufeff1, 2,3\n")
    assert subset_indices(4, tmp_path / "a.txt") == [2, 0, 3] and subset_indices(4, tmp_path / "b.csv") == [1, 2, 3]
    (tmp_path / "c.txt").write_text("-1\n2\n")
    with pytest.raises(ValueError, match=r"indices must lie in 0\.\.3 .* found -1\.\.2"):
        subset_indices(4, tmp_path / "c.txt")
    for name, data in (("d.txt", b"1\ntwo\n"), ("e.npy", b"\x93NUMPY broken"), ("g.bin", bytes([0xff, 0xfe, 0x00]))):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError, match=r"expected a 1-D integer array saved with numpy\.save, or a text file"):
            subset_indices(4, tmp_path / name)
    np.save(tmp_path / "2d.npy", np.zeros((2, 2), dtype=int))
    with pytest.raises(ValueError, match=r"found shape \(2, 2\)"):
        subset_indices(4, tmp_path / "2d.npy")
    with pytest.raises(FileNotFoundError, match="missing.npy"):
        subset_indices(4, tmp_path / "missing.npy")
    # what a text file holds instead of indices is named; repeats are scored once; an empty file is refused
    (tmp_path / "h.csv").write_text("idx\n0\n1\n")
    with pytest.raises(ValueError, match=r"h\.csv: line 1 holds 'idx', not an integer index; expected"):
        subset_indices(4, tmp_path / "h.csv")
    (tmp_path / "j.json").write_text("[3, 1, 3]")
    assert subset_indices(4, tmp_path / "j.json") == [3, 1]
    (tmp_path / "f.txt").write_text("3.0\n1.\n")  # a float column, as pandas writes one: the .npy rule
    assert subset_indices(4, tmp_path / "f.txt") == [3, 1]
    (tmp_path / "f.txt").write_text("3.5\n")
    with pytest.raises(ValueError, match=r"f\.txt: line 1 holds '3\.5', not an integer index"):
        subset_indices(4, tmp_path / "f.txt")
    np.save(tmp_path / "none.npy", np.array([], dtype=np.int64))
    (tmp_path / "none.txt").write_text("\n")
    for name in ("none.npy", "none.txt"):
        with pytest.raises(ValueError, match="holds no indices"):
            subset_indices(4, tmp_path / name)


def test_a_new_dataset_is_one_registry_entry(tmp_path, monkeypatch):
    """A dataset added as one table entry runs through eval_prob_dit.py: its choice, folder, classes and labels follow."""
    from pathlib import Path

    import eval_prob_dit
    from diffusion_classifier.data import registry
    from diffusion_classifier.records import load_record

    entry = registry.DatasetInfo("digits_copy", registry.DATASETS["digits"].build, classes="digits", class_conditional=True)
    monkeypatch.setitem(registry.DATASETS, "digits_copy", entry)
    args = ["--model", "tiny", "--to_keep", "1", "--n_samples", "4", "--imgs_to_eval", "3", "--log_dir", str(tmp_path),
            "--no_progress"]
    new = eval_prob_dit.main(args + ["--dataset", "digits_copy"])
    old = eval_prob_dit.main(args + ["--dataset", "digits"])
    assert Path(new["folder"]).parent.name == "digits_copy" and Path(old["folder"]).parent.name == "digits"
    assert registry.num_classes("digits_copy") == 10 and registry.check_split("digits_copy", "test") is None
    for name in ("000.pt", "001.pt", "002.pt"):  # the digits test split has 359 images
        a, b = load_record(Path(new["folder"]) / name), load_record(Path(old["folder"]) / name)
        assert (a["pred"], a["label"]) == (b["pred"], b["label"])


def test_make_subset_writes_the_stratified_indices_of_a_split(tmp_path):
    import numpy as np

    from conftest import load_script
    from diffusion_classifier.data.datasets import dataset_targets
    from diffusion_classifier.data.registry import get_dataset
    from diffusion_classifier.data.subsets import stratified_indices

    out = load_script("scripts/make_subset.py").main(["--dataset", "digits", "--split", "test", "--per_class", "3",
                                                      "--out", str(tmp_path / "s.npy")])
    indices = np.load(out)
    labels = np.asarray(dataset_targets(get_dataset("digits", ".", "test")))
    assert indices.tolist() == stratified_indices(labels, 3, 0) and np.bincount(labels[indices]).tolist() == [3] * 10


@pytest.mark.parametrize("name, folder, content", [
    ("imagenet", "imagenet/val", None),  # empty
    ("imagenet", "imagenet/val", "ILSVRC2012_val_00000001.JPEG"),  # loose val images, not sorted into wnid folders
    ("imagenetA", "imagenet-a", None),
    ("imagenetv2", "imagenetv2-matched-frequency-format-val", None),
    ("objectnet", "objectnet/images", "air_freshener/a.png"),  # only folders outside the ImageNet overlap
])
def test_folder_datasets_without_class_folders_fail_in_one_line(tmp_path, name, folder, content):
    (tmp_path / folder).mkdir(parents=True)
    if content:
        (tmp_path / folder / content).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4)).save(tmp_path / folder / content)
    with pytest.raises(FileNotFoundError) as e:
        get_dataset(name, tmp_path, "test")
    msg = str(e.value)
    assert msg.startswith(f"{name} data not found at {tmp_path / folder}:") and "no folder of the" in msg
    assert "\n" not in msg


def test_incomplete_torchvision_copies_fail_in_one_line(tmp_path):
    table = dataset_prompts("aircraft")
    data = tmp_path / "fgvc-aircraft-2013b" / "data"
    (data / "images").mkdir(parents=True)
    (data / "variants.txt").write_text("\n".join(table.classnames) + "\n")
    (data / "images_variant_trainval.txt").write_text("")  # the test split's file is missing
    with pytest.raises(FileNotFoundError, match=r"^aircraft data not found at .*fgvc-aircraft-2013b: .*"
                                                r"incomplete copy: .*images_variant_test\.txt"):
        get_dataset("aircraft", tmp_path, "test")
    (tmp_path / "eurosat" / "2750").mkdir(parents=True)  # no class folder
    with pytest.raises(FileNotFoundError, match=r"^eurosat data not found at .*2750: .*incomplete copy"):
        get_dataset("eurosat", tmp_path, "test")
    _image_folder(tmp_path / "caltech101" / "101_ObjectCategories", ["accordion"], per_class=1)
    with pytest.raises(FileNotFoundError, match=r"^caltech101 data not found at .*101_ObjectCategories: .*"
                                                r"no BACKGROUND_Google/"):
        get_dataset("caltech101", tmp_path, "test")


def test_a_partial_copy_names_the_missing_classes(tmp_path):
    table = dataset_prompts("eurosat")
    _image_folder(tmp_path / "eurosat" / "2750", [c for c in table.classnames if c not in ("Forest", "River")],
                  per_class=1)
    with pytest.raises(ValueError, match=r"8 classes do not match the 10 prompt classes .*missing: Forest, River\)"):
        get_dataset("eurosat", tmp_path, "test")


# ---------------------------------------------------------------- damaged torchvision copies


def _md5(path):
    import hashlib

    return hashlib.md5(path.read_bytes()).hexdigest()


def _fake_cifar(root, cls, n_per_file=2):
    """A fake copy in torchvision's layout (pickled batches, the meta file), its md5 lists set to match it."""
    import pickle

    folder = root / cls.base_folder
    folder.mkdir(parents=True)
    n_classes = 10 if cls.__name__ == "CIFAR10" else 100
    label_key = "labels" if n_classes == 10 else "fine_labels"
    for k, (f, _) in enumerate(cls.train_list + cls.test_list):
        batch = {"data": np.full((n_per_file, 3 * 32 * 32), k, np.uint8), label_key: list(range(n_per_file))}
        (folder / f).write_bytes(pickle.dumps(batch))
    names = dataset_prompts("cifar10" if n_classes == 10 else "cifar100").classnames
    (folder / cls.meta["filename"]).write_bytes(pickle.dumps({cls.meta["key"]: names}))
    return folder, ([[f, _md5(folder / f)] for f, _ in cls.train_list], [[f, _md5(folder / f)] for f, _ in cls.test_list],
                    dict(cls.meta, md5=_md5(folder / cls.meta["filename"])))


def _assert_damaged(e, name, path, *parts):
    from diffusion_classifier.errors import InputError

    msg = str(e.value)
    assert isinstance(e.value, InputError) and not isinstance(e.value, FileNotFoundError)
    assert msg.startswith(f"{name} data found at {path.parent}, but {path.name} fails its integrity check (")
    assert f"replace {path} with an intact copy from the official source" in msg
    assert "not found" not in msg and "\n" not in msg
    for part in parts:
        assert part in msg, (part, msg)


@pytest.mark.parametrize("name, damaged", [("cifar10", "data_batch_3"), ("cifar10", "test_batch"),
                                           ("cifar10", "batches.meta"), ("cifar100", "meta"), ("cifar100", "train")])
def test_cifar_copy_with_a_damaged_file_names_it(tmp_path, monkeypatch, name, damaged):
    from torchvision import datasets as tvd

    cls = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100
    folder, (train, test, meta) = _fake_cifar(tmp_path, cls)
    monkeypatch.setattr(cls, "train_list", train)
    monkeypatch.setattr(cls, "test_list", test)
    monkeypatch.setattr(cls, "meta", meta)
    assert len(get_dataset(name, tmp_path, "test")) == 2  # the intact fake copy loads
    expected = dict(train + test + [[meta["filename"], meta["md5"]]])[damaged]
    path = folder / damaged
    path.write_bytes(path.read_bytes()[:-7])  # truncated
    with pytest.raises(ValueError) as e:
        get_dataset(name, tmp_path, "test")
    _assert_damaged(e, name, path, f"expected md5 {expected}, found {_md5(path)}, {path.stat().st_size} bytes",
                    cls.url, f"torchvision.datasets.{cls.__name__}(DIR, train=False, download=True)")


def test_cifar_copy_against_torchvision_own_md5s(tmp_path):
    """Unpatched: torchvision's own list decides, and the message quotes its md5."""
    from torchvision import datasets as tvd

    folder, _ = _fake_cifar(tmp_path, tvd.CIFAR10)
    with pytest.raises(ValueError) as e:
        get_dataset("cifar10", tmp_path, "test")
    named = str(e.value).split(", but ")[1].split(" fails")[0]
    md5 = dict(tvd.CIFAR10.train_list + tvd.CIFAR10.test_list + [[tvd.CIFAR10.meta["filename"],
                                                                tvd.CIFAR10.meta["md5"]]])[named]
    _assert_damaged(e, "cifar10", folder / named, f"expected md5 {md5}, found {_md5(folder / named)}")


def test_cifar_incomplete_copy_names_the_missing_files(tmp_path):
    from torchvision import datasets as tvd

    folder, _ = _fake_cifar(tmp_path, tvd.CIFAR10)
    for f in ("data_batch_2", "data_batch_5"):
        (folder / f).unlink()
    with pytest.raises(FileNotFoundError) as e:  # missing, not damaged: the not-found message, naming the files
        get_dataset("cifar10", tmp_path, "test")
    msg = str(e.value)
    assert msg.startswith(f"cifar10 data not found at {folder}: ") and "\n" not in msg
    assert "incomplete copy: no data_batch_2, data_batch_5," in msg and "integrity" not in msg


def _fake_stl10(root):
    from torchvision import datasets as tvd

    folder = root / tvd.STL10.base_folder
    folder.mkdir(parents=True)
    for k, (f, _) in enumerate(tvd.STL10.train_list + tvd.STL10.test_list):  # 2 images (uint8 96x96x3) or labels 1..10
        values = np.arange(2 * 3 * 96 * 96 if f.endswith("X.bin") else 2) + k
        (folder / f).write_bytes((values % 10 + 1).astype(np.uint8).tobytes())
    (folder / tvd.STL10.class_names_file).write_text("\n".join(dataset_prompts("stl10").classnames) + "\n")
    return folder


def test_stl10_copy_of_the_wrong_size_is_named_without_hashing(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tvu

    folder = _fake_stl10(tmp_path)  # every file present, each far shorter than STL-10's
    hashed, md5 = [], tvu.calculate_md5
    monkeypatch.setattr(tvu, "calculate_md5", lambda path, **k: hashed.append(path) or md5(path, **k))
    with pytest.raises(ValueError) as e:
        get_dataset("stl10", tmp_path, "test")
    assert len(hashed) == 1  # torchvision's own check, stopped at train_X.bin; the diagnosis hashes nothing
    _assert_damaged(e, "stl10", folder / "train_X.bin", f"expected {5000 * 3 * 96 * 96} bytes, found {2 * 27648}",
                    "stl10_binary.tar.gz", "torchvision.datasets.STL10(DIR, split='test', download=True)")


def test_stl10_copy_of_the_right_size_with_a_wrong_md5(tmp_path, monkeypatch):
    from torchvision import datasets as tvd

    from diffusion_classifier.data import integrity

    folder = _fake_stl10(tmp_path)
    monkeypatch.setitem(integrity._KNOWN_SIZES, tvd.STL10, {f.name: f.stat().st_size for f in folder.glob("*.bin")})
    monkeypatch.setattr(tvd.STL10, "train_list", [[f, _md5(folder / f)] for f, _ in tvd.STL10.train_list])
    monkeypatch.setattr(tvd.STL10, "test_list", [[f, _md5(folder / f)] for f, _ in tvd.STL10.test_list])
    assert len(get_dataset("stl10", tmp_path, "test")) == 2  # the intact fake copy loads
    expected = _md5(folder / "test_y.bin")
    (folder / "test_y.bin").write_bytes(b"\x09\x09")  # same size, other content (a re-packed copy)
    with pytest.raises(ValueError) as e:
        get_dataset("stl10", tmp_path, "test")
    _assert_damaged(e, "stl10", folder / "test_y.bin", f"expected md5 {expected}, found {_md5(folder / 'test_y.bin')}")


def test_flowers_copy_with_a_damaged_split_file(tmp_path, monkeypatch):
    from torchvision import datasets as tvd

    folder = tmp_path / "flowers-102"
    (folder / "jpg").mkdir(parents=True)
    (folder / "imagelabels.mat").write_bytes(b"labels")
    (folder / "setid.mat").write_bytes(b"split ids")
    files = dict(tvd.Flowers102._file_dict, label=("imagelabels.mat", _md5(folder / "imagelabels.mat")))
    monkeypatch.setattr(tvd.Flowers102, "_file_dict", files)
    with pytest.raises(ValueError) as e:
        get_dataset("flowers", tmp_path, "test")
    _assert_damaged(e, "flowers", folder / "setid.mat",
                    f"expected md5 {files['setid'][1]}, found {_md5(folder / 'setid.mat')}",
                    "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/setid.mat")
    (folder / "jpg").rmdir()  # an image folder missing is missing data, whatever the files
    with pytest.raises(FileNotFoundError, match=rf"^flowers data not found at {folder}: .*incomplete copy: no jpg,"):
        get_dataset("flowers", tmp_path, "test")


def test_mnist_truncated_idx_file(tmp_path):
    """torchvision only checks that MNIST's files exist: a cut-short one is named by its size, not a traceback."""
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    sizes = {"train-images-idx3-ubyte": 16 + 60000 * 784, "train-labels-idx1-ubyte": 8 + 60000,
             "t10k-labels-idx1-ubyte": 8 + 10000}
    for f, size in sizes.items():
        with open(raw / f, "wb") as out:
            out.truncate(size)  # sparse: the right size at no cost
    header = (2051).to_bytes(4, "big") + (10000).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
    (raw / "t10k-images-idx3-ubyte").write_bytes(header + bytes(784 * 3))  # 3 images of 10000
    with pytest.raises(ValueError) as e:
        get_dataset("mnist", tmp_path, "test")
    _assert_damaged(e, "mnist", raw / "t10k-images-idx3-ubyte", f"expected {16 + 10000 * 784} bytes, found "
                    f"{16 + 784 * 3}", "t10k-images-idx3-ubyte.gz, gunzipped")


def test_images_of_any_mode_are_made_rgb_before_they_are_resized():
    """A palette, 1-bit or palette-with-alpha image resized as such is resampled nearest-neighbour (or blends palette
    indices): the API's PIL images are converted as image files are decoded, to RGB first."""
    from PIL import Image

    from diffusion_classifier.data.images import to_rgb

    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8))
    tf = sd_transform(16)
    for mode in ("P", "PA", "1", "L", "LA", "RGBA", "CMYK"):
        image = rgb.convert(mode)
        assert torch.equal(tf(image), tf(to_rgb(image))), mode


def test_files_of_an_image_folder_left_out_for_their_extension_are_counted_in_a_warning(tmp_path, capsys):
    _image_folder(tmp_path, ["cat", "dog"], per_class=1)
    Image.new("RGB", (8, 8)).save(tmp_path / "cat" / "anim.gif")
    (tmp_path / "dog" / "notes.txt").write_text("x")
    (tmp_path / "dog" / ".DS_Store").write_text("x")  # hidden: not counted
    dataset = get_dataset("imagefolder", tmp_path, "test")
    assert len(dataset.samples) == 2
    err = capsys.readouterr().err
    assert "2 file(s) in the class folders are left out" in err and "1 .gif, 1 .txt (first: cat/anim.gif)" in err


def test_a_link_to_a_parent_folder_lists_each_image_once_under_its_own_class(tmp_path, capsys):
    """os.walk follows links: a link back to the root would list every image again, other classes' under this one."""
    _image_folder(tmp_path / "imgs", ["cat", "dog"])
    (tmp_path / "imgs" / "cat" / "up").symlink_to(tmp_path / "imgs")
    (tmp_path / "elsewhere").mkdir()
    Image.new("RGB", (6, 4)).save(tmp_path / "elsewhere" / "linked.png")
    (tmp_path / "imgs" / "dog" / "more").symlink_to(tmp_path / "elsewhere")  # a link out of the root is followed
    dataset = get_dataset("imagefolder", tmp_path / "imgs", "test")
    assert sorted((Path(f).relative_to(tmp_path / "imgs").as_posix(), y) for f, y in dataset.samples) == [
        ("cat/img0.png", 0), ("cat/img1.png", 0), ("dog/img0.png", 1), ("dog/img1.png", 1), ("dog/more/linked.png", 1)]
    assert "reach, through symbolic links, an image already listed or another class's image" in capsys.readouterr().err
