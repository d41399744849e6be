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


# floors of the package, top first: a module imports only from floors below its own (or its own unit)
FLOORS = [
    {"__init__"},
    {"classifier", "cli", "runs", "training"},  # the Python API, the command-line boundary, run descriptions, training
    {"tasks"},  # what a run computes
    {"timestep_weights"},  # timestep weights learned from full evaluations
    {"calibration"},  # probabilities, temperatures and calibration error from the schedules' results (paired scores)
    {"class_offsets"},  # one log-prior per class: their format, the shift the schedules add, a run's manifest entry
    {"weighting"},  # timestep weights files: the ones a model ships, the ones a run used
    {"schedules", "loop", "baselines", "families"},  # evaluation schedules, the loop, the models
    {"loading"},
    {"engine", "packing"},
    {"objectives", "noise", "data"},
    {"vb"},
    {"claims"},
    {"records"},
    {"interrupts", "errors"},
]


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _module_graph() -> dict[str, set[str]]:
    """Package module -> the package modules it imports (a name imported from a package counts as its module)."""
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        me = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        deps = graph.setdefault(me, set())
        for module, names in _imports(path):
            if not module.startswith("diffusion_classifier"):
                continue
            for name in names:
                sub = (PACKAGE.parent / module.replace(".", "/") / name)
                deps.add(f"{module}.{name}" if sub.with_suffix(".py").is_file() or sub.is_dir() else module)
    return graph


def test_layers_import_only_downwards_and_without_circles():
    floor = {unit: k for k, units in enumerate(FLOORS) for unit in units}
    graph = _module_graph()
    units = {_unit(m) for m in graph}
    assert units <= set(floor), f"modules with no floor: {units - set(floor)}"
    for module, deps in graph.items():
        for dep in deps:
            if _unit(dep) != _unit(module):
                assert floor[_unit(dep)] > floor[_unit(module)], f"{module} imports {dep} from a floor above or beside it"
    # no circle among modules, lazy imports included
    state: dict[str, int] = {}

    def visit(m: str, trail: list[str]) -> None:
        state[m] = 1
        for d in graph.get(m, ()):
            if d == m or d not in graph:
                continue
            assert state.get(d) != 1, f"import circle: {' -> '.join(trail + [m, d])}"
            if d not in state:
                visit(d, trail + [m])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [])


def test_every_dataset_is_one_registry_entry_that_the_scripts_and_runs_read():
    """No module outside data/registry.py tests an evaluation dataset's name: the facts are in the table.

    (training/ has its own table of training sources, training/data.py.)"""
    import re

    from diffusion_classifier.data.registry import DATASETS

    names = "|".join(re.escape(n) for n in DATASETS)
    pattern = re.compile(rf"""(==|!=|\bin)\s*\(?["']({names})["']""")
    roots = [PACKAGE, PACKAGE.parent / "scripts"]
    files = [p for r in roots for p in r.rglob("*.py")] + list(PACKAGE.parent.glob("*.py"))
    offenders = [f"{p.name}: {m.group(0)}" for p in files if p.name != "registry.py" and "training" not in p.parts
                 for m in pattern.finditer(p.read_text())]
    assert not offenders, offenders
