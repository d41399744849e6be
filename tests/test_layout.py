"""The package's plan: families in one table, shared names public, layers that import only downwards."""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import diffusion_classifier
from diffusion_classifier.errors import InputError
from diffusion_classifier.families import FAMILIES, detect_family, loader

PACKAGE = Path(diffusion_classifier.__file__).parent


def _imports(path: Path):
    """(absolute module, imported names) of every `from ... import ...` in a package module."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module != "__future__":
            base = list(parts[: len(parts) - node.level]) if node.level else []  # __init__ counts as a module
            module = ".".join(base + ([node.module] if node.module else []))
            yield module, [a.name for a in node.names]


def test_no_module_imports_private_names():
    checked = 0
    for path in PACKAGE.rglob("*.py"):
        for module, names in _imports(path):
            if not module.startswith("diffusion_classifier"):
                continue
            checked += 1
            private = [n for n in names if n.startswith("_")]
            assert not private, f"{path} imports {private} from {module}"
    assert checked > 50


def test_every_family_is_one_module_with_its_loader_and_model_class():
    for name, family in FAMILIES.items():
        module, fn = family.loader.split(":")
        assert module == f"diffusion_classifier.families.{name}"
        load = loader(name)
        assert load.__name__ == fn and load.__module__ == module
        classes = [v for v in vars(importlib.import_module(module)).values()
                   if isinstance(v, type) and v.__module__ == module and getattr(v, "family", None) == name]
        assert len(classes) == 1, (name, classes)
    assert detect_family({"_class_name": "FluxPipeline"}) == "flux"
    with pytest.raises(InputError, match="is a class-conditional DiT, not a text-to-image model: use eval_prob_dit.py"):
        detect_family({"_class_name": "DiTPipeline"}, "facebook/DiT-XL-2-256")
    with pytest.raises(InputError, match="known: StableDiffusionPipeline, StableDiffusionXLPipeline, "
                                         "StableDiffusion3Pipeline, FluxPipeline$"):
        detect_family({"_class_name": "KandinskyPipeline"})
