"""dvc.yaml's deps and params, derived from what each stage reads.

A stage module declares what it reads: `PARAMS` (the params keys), `INPUTS` or
`inputs(*args)` (the data it opens; `args` are its command-line arguments as dvc.yaml writes
them, `${key}` and `${item.prev}` in the iteration stages) and, where params name files,
`param_deps(params)`. Its code deps are its script and the import closure of the
project modules it imports (function-level imports included, package `__init__`s too).
`mmloop graph --write` writes all of it into dvc.yaml; `mmloop graph` (and the test suite)
fails when dvc.yaml says something else. dvc.yaml's cmd, outs and metrics stay hand-written.

Why generate instead of templating: DVC interpolates strings into deps but not lists, and
`curate.sources` is a list of sources whose files must each be a dep.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path
from typing import Any

HEADER = """\
# One iteration: evaluate -> sample (ABS) -> generate -> eliminate -> train, unrolled over
# params.yaml's loop.iterations (each names its predecessor). Each stage is a thin module in stages/.
# deps and params are written by `mmloop graph --write` from what each stage reads; edit the rest.
"""


def stage_command(body: dict[str, Any]) -> tuple[str | None, list[str]]:
    """(the stage's python script, its arguments) from its cmd."""
    cmd = body.get("cmd", "")
    words = (" ".join(cmd) if isinstance(cmd, list) else str(cmd)).split()
    for position, word in enumerate(words):
        if word.endswith(".py"):
            return word, words[position + 1:]
    return None, []


def module_file(name: str, package_root: Path) -> Path | None:
    parts = name.split(".")
    if parts[0] != "mmloop":
        return None
    base = package_root.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_names(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def import_closure(script: Path, package_root: Path) -> set[Path]:
    """Every project module file that running `script` can import, transitively."""
    seen: set[Path] = set()
    todo = [script]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in _imported_names(path):
            parts = name.split(".")
            # Importing a.b.c runs a/__init__.py and a/b/__init__.py as well.
            for end in range(1, len(parts) + 1):
                found = module_file(".".join(parts[:end]), package_root)
                if found is not None and found not in seen:
                    todo.append(found)
    seen.discard(script)
    return seen


def load_stage_module(path: Path):
    spec = importlib.util.spec_from_file_location(f"mmloop_stage_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def stage_declarations(root: Path, script: str, args: list[str], params) -> tuple[list[str], list[str]]:
    """(deps, params) of the stage run as `script args`, as dvc.yaml should list them."""
    path = root / script
    module = load_stage_module(path)
    code = sorted(str(file.relative_to(root)) for file in import_closure(path, root / "src" / "mmloop"))
    data = module.inputs(*args) if hasattr(module, "inputs") else getattr(module, "INPUTS", ())
    deps = [script, *code, *data]
    if hasattr(module, "param_deps"):
        deps += module.param_deps(params)
    return list(dict.fromkeys(deps)), list(module.PARAMS)


def expected(root: Path) -> str:
    """dvc.yaml with every stage's deps and params derived from the stage modules."""
    import yaml

    from mmloop import config

    document = yaml.safe_load((root / "dvc.yaml").read_text(encoding="utf-8"))
    params = config.read(root / config.PARAMS_FILE)
    for stage in document["stages"].values():
        body = stage.get("do", stage)
        script, args = stage_command(body)
        if script is None:
            continue
        deps, keys = stage_declarations(root, script, args, params)
        rebuilt = {}
        for key, value in body.items():  # keep the hand-written order: cmd, deps, params, outs, metrics
            if key == "deps":
                value = deps
            elif key == "params":
                continue
            rebuilt[key] = value
            if key == "deps" and keys:
                rebuilt["params"] = keys
        if "deps" not in rebuilt:
            rebuilt = {"cmd": body["cmd"], "deps": deps, **({"params": keys} if keys else {}),
                       **{k: v for k, v in body.items() if k != "cmd"}}
        body.clear()
        body.update(rebuilt)
    return HEADER + yaml.safe_dump(document, sort_keys=False, width=120, default_flow_style=False)


def check(root: Path = Path(".")) -> list[str]:
    """The lines where dvc.yaml differs from what the stages read (empty when it is true)."""
    import difflib

    current = (root / "dvc.yaml").read_text(encoding="utf-8")
    return list(difflib.unified_diff(current.splitlines(), expected(root).splitlines(),
                                     "dvc.yaml", "dvc.yaml (from the stages)", lineterm="", n=1))


def write(root: Path = Path(".")) -> bool:
    """Rewrite dvc.yaml's deps and params; True when anything changed."""
    from mmloop.io import write_text

    text = expected(root)
    if text == (root / "dvc.yaml").read_text(encoding="utf-8"):
        return False
    write_text(root / "dvc.yaml", text)
    return True
