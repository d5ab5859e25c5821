"""Comparing DVC experiments: arms (a params key) over loop seeds, gains per benchmark category.

`mmloop compare --by evolve.rounds` reads `dvc exp show --json` (or a saved copy of it): every
experiment's params.yaml and its `metrics/eval/iter=N.json`. A run is an (arm, seed) pair: the
arm is the value of `--by`, the seed that of `--seed` (loop.seed). Each run's gain is its last
iteration's accuracy minus iteration 0's, per category and overall, in points. Arms are
compared seed by seed (paired: the same seed is the same base model and the same draws up to
the arm's change), with the 95% half-width of one evaluation's difference beside the mean.
"""

from __future__ import annotations

import json
import math
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

EVAL_METRICS = "metrics/eval/iter={}.json"
PARAMS_FILE = "params.yaml"
BASE = "0"


@dataclass
class Run:
    name: str
    arm: str
    seed: str
    base: Mapping[str, Any]  # iteration 0's eval metrics
    last: Mapping[str, Any]  # the last iteration's
    iteration: str

    def gain(self, category: str | None) -> float:
        """Points gained from iteration 0 to the last (None: overall)."""
        if category is None:
            return 100.0 * (self.last["overall"] - self.base["overall"])
        return 100.0 * (self.last["categories"][category] - self.base["categories"][category])


def lookup(tree: Mapping[str, Any], dotted: str) -> Any:
    value: Any = tree
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            raise KeyError(dotted)
        value = value[part]
    return value


def _entries(node: Any) -> Iterable[tuple[str, Mapping[str, Any]]]:
    """(name, data) of every commit and experiment in `dvc exp show --json`, outermost first."""
    if isinstance(node, list):
        for item in node:
            yield from _entries(item)
    elif isinstance(node, Mapping):
        data = node.get("data")
        if isinstance(data, Mapping) and "params" in data and node.get("rev") != "workspace":
            yield str(node.get("name") or node.get("rev"))[:40], data
        for key in ("experiments", "revs"):
            if node.get(key):
                yield from _entries(node[key])


def runs(shown: Any, *, by: str, seed: str = "loop.seed", iteration: str | None = None) -> list[Run]:
    """The runs of a `dvc exp show --json` document that have eval metrics for iteration 0 and
    `iteration` (default: each run's last). The first entry of an (arm, seed) pair wins: a
    baseline commit and an experiment that repeats it are one run."""
    found: dict[tuple[str, str], Run] = {}
    for name, data in _entries(shown):
        params = ((data.get("params") or {}).get(PARAMS_FILE) or {}).get("data") or {}
        metrics = {path: (entry or {}).get("data") for path, entry in (data.get("metrics") or {}).items()}
        try:
            arm, run_seed = str(lookup(params, by)), str(lookup(params, seed))
        except KeyError:
            continue
        iterations = sorted((path[len("metrics/eval/iter="):-len(".json")] for path in metrics
                             if path.startswith("metrics/eval/iter=") and metrics[path]), key=_order)
        last = iteration or (iterations[-1] if iterations else None)
        if BASE not in iterations or last not in iterations or last == BASE:
            continue
        found.setdefault((arm, run_seed), Run(name, arm, run_seed, metrics[EVAL_METRICS.format(BASE)],
                                              metrics[EVAL_METRICS.format(last)], last))
    return sorted(found.values(), key=lambda run: (_order(run.arm), _order(run.seed)))


def _order(value: str) -> tuple:
    return (0, float(value), "") if _is_number(value) else (1, 0.0, value)


def _is_number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def _points(value: float) -> str:
    return f"{value:+.1f}".replace("-", "−")


def half_width(runs_: Sequence[Run], category: str | None) -> float:
    """95% half-width, in points, of the difference between two evaluations of one category
    (binomial, the items taken as independent; the mean accuracy of `runs_`' last iterations)."""
    if category is None:
        n = sum(runs_[0].last["n_per_category"].values())
        p = sum(run.last["overall"] for run in runs_) / len(runs_)
    else:
        n = runs_[0].last["n_per_category"][category]
        p = sum(run.last["categories"][category] for run in runs_) / len(runs_)
    return 100.0 * 1.96 * math.sqrt(2 * p * (1 - p) / n)


def table(runs_: Sequence[Run], *, by: str, seed: str = "loop.seed", baseline: str | None = None) -> str:
    """Markdown: each run's gains per category, each arm's mean, and each arm's paired difference
    from `baseline` (default: the first arm) per seed, with the mean and the noise of one
    evaluation's difference."""
    if not runs_:
        raise ValueError(f"no experiment has eval metrics for iteration 0 and a later one, with params {by} "
                         f"and {seed}: run `dvc exp run -S {by}=...` first")
    categories = sorted({category for run in runs_ for category in run.last["categories"]})
    columns: list[str | None] = [*categories, None]
    arms = list(dict.fromkeys(run.arm for run in runs_))
    baseline = arms[0] if baseline is None else str(baseline)
    if baseline not in arms:
        raise ValueError(f"--baseline {baseline!r} is not an arm (arms of {by}: {', '.join(arms)})")
    iterations = sorted({run.iteration for run in runs_}, key=_order)
    header = ["run", *categories, "overall"]
    lines = [f"Gains from iteration 0 to iteration {'/'.join(iterations)}, in points "
             f"(arm: `{by}`, seed: `{seed}`).", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for arm in arms:
        mine = [run for run in runs_ if run.arm == arm]
        for run in mine:
            lines.append(f"| {by}={arm}, {seed}={run.seed} | "
                         + " | ".join(_points(run.gain(column)) for column in columns) + " |")
        lines.append(f"| **{by}={arm}, mean of {len(mine)}** | "
                     + " | ".join(f"**{_points(sum(run.gain(c) for run in mine) / len(mine))}**" for c in columns)
                     + " |")
    base_runs = {run.seed: run for run in runs_ if run.arm == baseline}
    for arm in arms:
        if arm == baseline:
            continue
        pairs = [(run, base_runs[run.seed]) for run in runs_ if run.arm == arm and run.seed in base_runs]
        if not pairs:
            continue
        lines += ["", f"{by}={arm} minus {by}={baseline}, paired by seed (points; ±: the 95% half-width of one "
                      f"evaluation's difference):", "", "| " + " | ".join(["seed", *categories, "overall"]) + " |",
                  "|" + "---|" * (len(categories) + 2)]
        for run, base in pairs:
            lines.append(f"| {run.seed} | " + " | ".join(_points(run.gain(c) - base.gain(c)) for c in columns) + " |")
        means = [sum(run.gain(c) - base.gain(c) for run, base in pairs) / len(pairs) for c in columns]
        noise = [half_width([run for pair in pairs for run in pair], c) for c in columns]
        lines.append(f"| **mean of {len(pairs)}** | "
                     + " | ".join(f"**{_points(mean)}** ±{width:.1f}" for mean, width in zip(means, noise)) + " |")
    return "\n".join(lines)


def show_experiments() -> Any:
    """`dvc exp show --json` of the repository in the working directory."""
    result = subprocess.run(["dvc", "exp", "show", "--json"], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"dvc exp show failed: {result.stderr.strip()[-2000:]}")
    return json.loads(result.stdout)
