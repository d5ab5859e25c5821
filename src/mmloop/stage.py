"""What every stage entry does first: its params view, its params-named inputs checked against
dvc.yaml, and its start-up measured.

Start-up is the time from the process's start (as the kernel recorded it) until the stage is
ready to work: interpreter, project imports, the heavy libraries it names in `preload`, and the
params checked. It goes to metrics/startup/STAGE.json with the stage's whole wall time, so
`python bench/bench_startup.py` can set their sum against the run's.
"""

from __future__ import annotations

import atexit
import importlib
import os
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from mmloop import config

STARTUP_DIR = Path("metrics/startup")
DVC_FILE = Path("dvc.yaml")


def process_age() -> float:
    """Seconds since this process started (Linux /proc; elsewhere, since this module loaded)."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        started_ticks = int(fields[19])  # field 22 of stat(5), counted after the command name
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - started_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return time.perf_counter() - _LOADED


_LOADED = time.perf_counter()


def begin(name: str, declared: Iterable[str], *, preload: Iterable[str] = (),
          param_deps: Callable[[config.Params], list[str]] | None = None,
          params_file: str | os.PathLike = config.PARAMS_FILE) -> config.StageParams:
    """The stage's params view; fails when a file its params name is not among its dvc.yaml deps."""
    family = name.split("@")[0]
    for module in preload:
        importlib.import_module(module)
    params = config.read(params_file)
    if param_deps is not None and DVC_FILE.is_file():
        check_declared(family, param_deps(params))
    _record_startup(name, process_age())
    return config.StageParams(params, tuple(declared), family)


def check_declared(stage: str, paths: Iterable[str]) -> None:
    """Every path must be a dep of `stage` in dvc.yaml: else DVC would not rerun the stage
    when the file changes (`dvc exp run -S curate.sources=...` names new files, for example)."""
    import yaml

    stages = (yaml.safe_load(DVC_FILE.read_text(encoding="utf-8")) or {}).get("stages", {})
    body = stages.get(stage, {})
    deps = {str(dep) for dep in body.get("do", body).get("deps", [])}
    missing = [path for path in paths if path not in deps]
    if missing:
        raise SystemExit(f"stage {stage!r} reads {', '.join(missing)} (named in params.yaml), which dvc.yaml "
                         f"does not list among its deps: run `mmloop graph --write` to declare it")


def _record_startup(name: str, startup_s: float) -> None:
    """metrics/startup/NAME.json as the process ends, unless it ends with an uncaught error."""
    path = STARTUP_DIR.resolve() / f"{name}.json"  # the stage's folder, whatever the cwd is at exit

    def write() -> None:
        if getattr(sys, "last_value", None) is None:
            from mmloop.io import write_json

            write_json(path,
                       {"stage": name, "startup_s": round(startup_s, 2), "wall_s": round(process_age(), 2)})

    atexit.register(write)
