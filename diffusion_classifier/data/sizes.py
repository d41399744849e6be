"""Image sizes: S for a square, (H, W) otherwise, as flags, configs (`sample_size`) and the API give them."""
from __future__ import annotations

import operator
from typing import Sequence

from ..errors import InputError


def image_hw(size: int | Sequence[int]) -> tuple[int, int]:
    """(H, W) of a size given as S (the square (S, S)) or as a pair [H, W] of positive integers."""
    try:
        pair = tuple(map(operator.index, size if isinstance(size, (tuple, list)) else (size, size)))
    except TypeError:  # a float, a string, None
        pair = ()
    if len(pair) != 2 or min(pair) < 1 or isinstance(size, bool):
        raise InputError(f"expected an image size S or (H, W) of positive integers, got {size!r}")
    return pair


def image_size(size: int | Sequence[int]) -> int | tuple[int, int]:
    """The one form of a size: S for a square (also when given as (S, S)), else (H, W)."""
    h, w = image_hw(size)
    return h if h == w else (h, w)


def size_name(size: int | Sequence[int]) -> str:
    """'S' for a square, 'HxW' otherwise: how folder and file names show a size."""
    h, w = image_hw(size)
    return str(h) if h == w else f"{h}x{w}"
