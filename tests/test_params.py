import pytest

from mmloop import params


def test_ancestry_walks_back_to_the_base():
    config = {"loop": {"iterations": {"1": {"prev": "0"}, "2": {"prev": "1"}, "3": {"prev": 2}}}}
    assert params.ancestry(config, "3") == ["3", "2", "1", "0"]


def test_missing_iteration_is_named():
    with pytest.raises(KeyError, match="'7'"):
        params.iteration({"loop": {"iterations": {"1": {"prev": "0"}}}}, "7")


def test_cycle_is_detected():
    config = {"loop": {"iterations": {"1": {"prev": "2"}, "2": {"prev": "1"}}}}
    with pytest.raises(ValueError, match="cycle"):
        params.ancestry(config, "1")


def test_stage_seeds_differ_by_stage_and_iteration():
    config = {"seed": 0}
    assert params.stage_seed(config, "sample", "1") == params.stage_seed(config, "sample", "1")
    assert params.stage_seed(config, "sample", "1") != params.stage_seed(config, "sample", "2")
    assert params.stage_seed(config, "sample", "1") != params.stage_seed({"seed": 1}, "sample", "1")


def test_loop_seed_varies_iterations_but_not_the_base():
    config = {"seed": 0}
    other = {"seed": 0, "loop": {"seed": 1}}
    assert params.stage_seed(config, "sample", "1") != params.stage_seed(other, "sample", "1")
    assert params.stage_seed(config, "base") == params.stage_seed(other, "base")
    assert params.stage_seed(config, "train", "2") == params.stage_seed({"seed": 0, "loop": {"seed": 0}}, "train", "2")
