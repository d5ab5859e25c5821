"""`mmloop compare`: arms and seeds from `dvc exp show --json`, gains and paired differences."""

import json

import pytest

from mmloop import experiments
from mmloop.cli import main


def metrics(iteration, accuracies, n=100):
    overall = sum(accuracies.values()) / len(accuracies)
    return {"data": {"iteration": iteration, "overall": overall, "categories": accuracies,
                     "n_per_category": {name: n for name in accuracies}}}


def entry(name, rounds, seed, final, base=None):
    base = base or {"colour": 0.5, "multihop": 0.25}
    return {"rev": name, "name": name, "data": {
        "params": {"params.yaml": {"data": {"evolve": {"rounds": rounds}, "loop": {"seed": seed}}}},
        "metrics": {"metrics/eval/iter=0.json": metrics(0, base), "metrics/eval/iter=2.json": metrics(2, final),
                    "metrics/world.json": {"data": {"images": 3}}}}}


def shown():
    """The shape of `dvc exp show --json`: commits, each with its experiments' revs."""
    baseline = entry("abc123", 0, 0, {"colour": 0.70, "multihop": 0.30})
    experiments_ = [entry("r3-s0", 3, 0, {"colour": 0.69, "multihop": 0.45}),
                    entry("r0-s1", 0, 1, {"colour": 0.80, "multihop": 0.26}),
                    entry("r3-s1", 3, 1, {"colour": 0.78, "multihop": 0.40}),
                    entry("repeat", 0, 0, {"colour": 0.10, "multihop": 0.10})]  # the baseline again: dropped
    workspace = entry("workspace", 0, 0, {"colour": 0.0, "multihop": 0.0})
    return [workspace, {**baseline, "experiments": [{"revs": [e]} for e in experiments_]}]


def test_runs_are_arm_and_seed_pairs_with_their_gains():
    runs = experiments.runs(shown(), by="evolve.rounds")
    assert [(run.arm, run.seed, run.name) for run in runs] == [
        ("0", "0", "abc123"), ("0", "1", "r0-s1"), ("3", "0", "r3-s0"), ("3", "1", "r3-s1")]
    assert runs[2].gain("multihop") == pytest.approx(20.0) and runs[2].gain("colour") == pytest.approx(19.0)
    assert runs[0].gain(None) == pytest.approx(12.5)


def test_the_table_pairs_arms_by_seed_with_the_noise():
    table = experiments.table(experiments.runs(shown(), by="evolve.rounds"), by="evolve.rounds")
    lines = table.splitlines()
    assert "| evolve.rounds=3, loop.seed=0 | +19.0 | +20.0 | +19.5 |" in lines
    assert "| **evolve.rounds=0, mean of 2** | **+25.0** | **+3.0** | **+14.0** |" in lines
    paired = lines[lines.index("| seed | colour | multihop | overall |") + 2:]
    assert paired[0] == "| 0 | −1.0 | +15.0 | +7.0 |" and paired[1] == "| 1 | −2.0 | +14.0 | +6.0 |"
    # Half-width of one evaluation's difference: 1.96 * sqrt(2 p (1 - p) / n), p the arms' mean accuracy.
    assert paired[2] == "| **mean of 2** | **−1.5** ±12.1 | **+14.5** ±13.2 | **+6.5** ±9.8 |"  # overall: n = 200


def test_compare_names_what_is_missing(tmp_path, capsys):
    path = tmp_path / "shown.json"
    path.write_text(json.dumps(shown()))
    assert main(["compare", "--by", "evolve.rounds", "--json", str(path)]) == 0
    assert "evolve.rounds=3 minus evolve.rounds=0" in capsys.readouterr().out
    assert main(["compare", "--by", "sample.strategy", "--json", str(path)]) == 1
    assert "params sample.strategy" in capsys.readouterr().err
    assert main(["compare", "--by", "evolve.rounds", "--baseline", "7", "--json", str(path)]) == 1
    assert "--baseline '7' is not an arm" in capsys.readouterr().err
