"""The package's plan: families in one table, shared names public, deprecated modules only for old callers."""
from __future__ import annotations

import ast
import importlib
import warnings
from pathlib import Path

import pytest

import diffusion_classifier
from diffusion_classifier.errors import InputError
from diffusion_classifier.families import FAMILIES, detect_family, loader

PACKAGE = Path(diffusion_classifier.__file__).parent
DEPRECATED = {"models", "dit"}  # modules kept for callers of the old layout


def _imports(path: Path):
    """(absolute module, imported names) of every `from ... import ...` in a package module."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module != "__future__":
            base = list(parts[: len(parts) - node.level]) if node.level else []  # __init__ counts as a module
            module = ".".join(base + ([node.module] if node.module else []))
            yield module, [a.name for a in node.names]


def test_no_module_imports_private_names_or_the_deprecated_modules():
    checked = 0
    for path in PACKAGE.rglob("*.py"):
        if path.parent == PACKAGE and path.stem in DEPRECATED:
            continue
        for module, names in _imports(path):
            if not module.startswith("diffusion_classifier"):
                continue
            checked += 1
            assert module.split(".")[1:2] != ["models"] and module != "diffusion_classifier.dit", f"{path}: {module}"
            private = [n for n in names if n.startswith("_")]
            assert not private, f"{path} imports {private} from {module}"
    assert checked > 50
    assert not [f for f in FAMILIES.values() if f.loader.split(":")[0].split(".")[1] in DEPRECATED]


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


@pytest.mark.parametrize("old, new", [("models", ["families.sd", "families.dit", "families", "loading"]),
                                      ("dit", ["per_class"])])
def test_deprecated_modules_warn_and_reexport_the_same_objects(old, new):
    import sys

    sys.modules.pop(f"diffusion_classifier.{old}", None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mod = importlib.import_module(f"diffusion_classifier.{old}")
    assert any(issubclass(w.category, DeprecationWarning) and f"diffusion_classifier.{old} is deprecated" in str(w.message)
               for w in caught)
    homes = [importlib.import_module(f"diffusion_classifier.{n}") for n in new]
    for name in mod.__all__:
        assert any(getattr(h, name, None) is getattr(mod, name) for h in homes), name
