"""The JSON writer of every benchmark: the result and its `provenance` (command line, package versions, date)."""
from __future__ import annotations

import datetime
import json
import os
import shlex
import sys
from pathlib import Path

from diffusion_classifier.records import environment_info, write_json

ENV_VARS = ("OMP_NUM_THREADS",)  # environment settings that change what a benchmark measures


def command_line(script: str, argv=None) -> str:
    """'python benchmarks/<script>.py ARGS' of this run; argv: the arguments main() parsed (None: sys.argv[1:])."""
    args = sys.argv[1:] if argv is None else [str(a) for a in argv]
    env = "".join(f"{k}={os.environ[k]} " for k in ENV_VARS if k in os.environ)
    return f"{env}python benchmarks/{Path(script).name} {shlex.join(args)}".rstrip()


def provenance(script: str, argv=None) -> dict:
    """The command line, versions (python, torch, diffusers, transformers, ...) and date of this run."""
    return {"command": command_line(script, argv), "versions": environment_info(),
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}


def write_result(path: str | Path, result, script: str, argv=None, merge: bool = False, sort_keys: bool = False) -> None:
    """Write `result` (a dict; a list is written as {'rows': list}) to `path` with a 'provenance' entry.

    merge: the entries of an earlier file at `path` that this run does not replace are kept; the provenance is
    then a list, one entry per run that wrote some of them, each naming the entries it wrote ('wrote')."""
    path = Path(path)
    out = {"rows": result} if isinstance(result, list) else dict(result)
    entry = provenance(script, argv)
    if merge:
        old = json.loads(path.read_text()) if path.is_file() else {}
        earlier = old.pop("provenance", [])
        earlier = [dict(earlier, wrote=list(old))] if isinstance(earlier, dict) else earlier
        earlier = [dict(p, wrote=[k for k in p.get("wrote", []) if k not in out]) for p in earlier]
        entry = [p for p in earlier if p["wrote"]] + [dict(entry, wrote=list(out))]
        out = old | out
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, {**out, "provenance": entry}, sort_keys=sort_keys)
