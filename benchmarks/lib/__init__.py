"""Shared code of the benchmark scripts: every script in benchmarks/ imports from here, never from another script.

Importing it puts the checkout on sys.path, so the scripts run from any working directory, installed or not.
"""
from __future__ import annotations

import argparse
import functools
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the checkout
RESULTS = ROOT / "benchmarks" / "results"  # result files, committed
CACHE = ROOT / "benchmarks" / "cache"  # resumable run folders, not committed
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@functools.lru_cache(maxsize=None)
def entry_script(name: str):
    """The toolkit's entry script ROOT/<name>.py (eval_prob_adaptive, eval_prob_dit) as a module, loaded once."""
    spec = importlib.util.spec_from_file_location(name, ROOT / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # as an import would: pickling and dataclasses look the module up
    spec.loader.exec_module(mod)
    return mod


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Every flag's default in --help, and the script's docstring (with its example commands) as written."""
