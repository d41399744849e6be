"""Fashion-MNIST (Zalando: 60,000 train and 10,000 test 28x28 grey product photos, 10 classes).

Read with torchvision's `FashionMNIST` from `<root>/FashionMNIST/raw/`. When that folder lacks the raw IDX
files, the gzipped originals are looked for under the root and in the folder of the distribution's package
(`apt-get install dataset-fashion-mnist` puts them in /usr/share/datasets/fashion-mnist/), and decompressed
once into a cache folder that torchvision then reads.
"""
from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

import numpy as np

from ..errors import InputError, MissingError

NATIVE_SIZE = 28
# Label order and names as Zalando gives them (torchvision's FashionMNIST.classes).
CLASSNAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
PACKAGE_DIR = Path("/usr/share/datasets/fashion-mnist")  # apt-get install dataset-fashion-mnist
FILES = {  # split -> (images, labels), as Zalando names them
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
CACHE_ENV = "DIFFUSION_CLASSIFIER_CACHE"
PACKAGE_ENV = "FASHION_MNIST_DIR"  # a folder of the gzipped IDX files to use instead of PACKAGE_DIR


def package_dir() -> Path:
    """The folder of the gzipped IDX files: $FASHION_MNIST_DIR, else the distribution package's."""
    return Path(os.environ.get(PACKAGE_ENV) or PACKAGE_DIR).expanduser()


def cache_dir() -> Path:
    """Where decompressed data goes: $DIFFUSION_CLASSIFIER_CACHE, else $XDG_CACHE_HOME or ~/.cache, /diffusion_classifier."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser()
    return base / "diffusion_classifier"


def _raw_names() -> list[str]:
    return [name for pair in FILES.values() for name in pair]


def has_raw(folder: Path) -> bool:
    """Whether folder holds the four uncompressed IDX files torchvision reads."""
    return all((folder / name).is_file() for name in _raw_names())


def _gz_folders(root: Path | None) -> list[Path]:
    """Folders that may hold the gzipped IDX files, in the order they are tried."""
    folders = []
    if root is not None:
        folders += [root / "FashionMNIST" / "raw", root / "fashion-mnist", root]
    folders.append(package_dir())
    return folders


def _decompress(src: Path, dest: Path) -> None:
    """gunzip src into dest atomically (records.atomic_write_bytes: a temporary file renamed over dest)."""
    from ..records import atomic_write_bytes

    with gzip.open(src, "rb") as f:
        atomic_write_bytes(dest, lambda out: shutil.copyfileobj(f, out), flag="--dataset_root")


def not_found_error(root: Path | None) -> MissingError:
    where = f"{root}/FashionMNIST/raw" if root is not None else "the dataset root"
    return MissingError(
        f"fashion_mnist data not found at {where} nor in {package_dir()}: install the distribution's package "
        f"(apt-get install dataset-fashion-mnist), or fetch it with torchvision.datasets.FashionMNIST(DIR, download=True) "
        f"and pass --dataset_root DIR")


def torchvision_root(root: str | Path | None = None) -> Path:
    """A folder R with R/FashionMNIST/raw/<IDX files>: the given root if it has them, else the cache, filled
    once from the first folder holding the four gzipped files."""
    root = Path(root).expanduser() if root is not None else None
    if root is not None and has_raw(root / "FashionMNIST" / "raw"):
        return root
    cache = cache_dir()
    raw = cache / "FashionMNIST" / "raw"
    for folder in _gz_folders(root):
        gz = [folder / f"{name}.gz" for name in _raw_names()]
        if all(f.is_file() for f in gz):
            for src in gz:
                dest = raw / src.stem
                if not dest.is_file() or dest.stat().st_mtime < src.stat().st_mtime:
                    try:
                        _decompress(src, dest)
                    except (OSError, EOFError) as e:
                        raise InputError(f"{src}: cannot decompress the gzipped IDX file ({e}); expected "
                                         f"Fashion-MNIST's {src.name}") from None
            return cache
    if has_raw(raw):
        return cache
    raise not_found_error(root)


def load_dataset(root: str | Path | None, split: str, transform=None):
    """torchvision's FashionMNIST of the split ('train' or 'test'), PIL images 'L' 28x28, labels 0..9."""
    import torchvision.datasets as tvd

    if split not in FILES:
        raise InputError(f"fashion_mnist split must be one of {', '.join(FILES)}, got {split!r}")
    base = torchvision_root(root)
    try:
        return tvd.FashionMNIST(str(base), train=split == "train", transform=transform, download=False)
    except RuntimeError as e:
        raise InputError(f"{base}/FashionMNIST/raw: torchvision cannot read the IDX files ({e}); expected "
                         f"Fashion-MNIST's {', '.join(FILES[split])}") from None
    except (ValueError, AssertionError, IndexError) as e:
        raise InputError(f"{base}/FashionMNIST/raw: malformed IDX files ({type(e).__name__}: {e}); expected "
                         f"Fashion-MNIST's {', '.join(FILES[split])}: delete them to decompress again") from None


def load_arrays(split: str, root: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 28, 28), labels int64 (N,)) of the split."""
    ds = load_dataset(root, split)
    return ds.data.numpy(), ds.targets.numpy().astype(np.int64)
