"""params.yaml: loading, and walking the chain of iterations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

BASE_ITERATION = "0"


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    import yaml

    path = Path(path)
    with path.open(encoding="utf-8") as handle:
        params = yaml.safe_load(handle) or {}
    if not isinstance(params, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return params


def iteration(params: dict[str, Any], name: str) -> dict[str, Any]:
    """The entry of iteration `name` in `loop.iterations`, with a clear error if absent."""
    iterations = params.get("loop", {}).get("iterations", {})
    key = str(name)
    if key not in iterations:
        raise KeyError(f"params.yaml: loop.iterations has no iteration {key!r} (have {sorted(iterations)})")
    entry = dict(iterations[key] or {})
    if "prev" not in entry:
        raise KeyError(f"params.yaml: loop.iterations.{key}.prev is missing")
    entry["prev"] = str(entry["prev"])
    return entry


def ancestry(params: dict[str, Any], name: str) -> list[str]:
    """Iteration names from `name` back to the base model ("0"), newest first."""
    chain, key = [], str(name)
    while key != BASE_ITERATION:
        if key in chain:
            raise ValueError(f"params.yaml: loop.iterations has a cycle through {key!r}")
        chain.append(key)
        key = iteration(params, key)["prev"]
    return chain + [BASE_ITERATION]


def stage_seed(params: dict[str, Any], stage: str, iteration_name: str | int = BASE_ITERATION) -> int:
    """A per-stage, per-iteration RNG seed derived from the one global seed.

    Iteration stages also mix in `loop.seed`, so `dvc exp run -S loop.seed=1` repeats the
    loop with other draws (sampling, generation, training) on the same world and base model.
    """
    from mmloop.io import stable_hash

    parts: list[Any] = [int(params.get("seed", 0)), stage, str(iteration_name)]
    if str(iteration_name) != BASE_ITERATION:
        parts.append(int((params.get("loop") or {}).get("seed", 0)))
    return int(stable_hash(*parts, length=8), 16)
