import pytest
import yaml

from mmloop import config


def raw_params() -> dict:
    with open("params.yaml", encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def test_params_yaml_lists_every_key_with_the_default_value():
    # DVC tracks only what params.yaml says: a value used but absent there would change nothing DVC sees.
    raw = raw_params()
    assert config.Params.model_validate(raw).model_dump() == config.Params().model_dump()

    def missing(defaults: dict, given: dict, prefix: str = "") -> list[str]:
        keys = []
        for key, value in defaults.items():
            if key not in given:
                keys += [] if value is None else [prefix + key]  # optional blocks (generate.openai) may be absent
            elif isinstance(value, dict) and value:
                keys += missing(value, given[key], f"{prefix}{key}.")
        return keys

    assert missing(config.Params().model_dump(mode="json"), raw) == []


@pytest.mark.parametrize("change, message", [
    ({"seed": "zero"}, "seed: Input should be a valid integer (got 'zero')"),
    ({"sample": {"budget": "5"}}, "sample.budget: Input should be a valid integer (got '5')"),
    ({"sample": {"bugdet": 5}}, "sample.bugdet: Extra inputs are not permitted (got 5)"),
    ({"train": {"lr": -1}}, "train.lr: Input should be greater than 0 (got -1)"),
    ({"answer_format": "letters"}, "answer_format: Input should be 'letter' or 'option' (got 'letters')"),
    ({"curate": {"family_weights": {"colour": 1, "hue": 1}}}, "curate.family_weights: Value error, unknown family"),
    ({"curate": {"sources": [{"kind": "coco"}]}}, "curate.sources.0.coco.instances: Field required"),
    ({"world": {"image_size": 60, "grid": 8}}, "world: Value error, image_size (60) must be a multiple of grid (8)"),
    ({"generate": {"backend": "openai"}}, "generate: Value error, backend 'openai' needs generate.openai"),
    ({"generate": {"openai": {"model": "m", "api_key": "sk-x"}}}, "api_key is not allowed"),
    ({"loop": {"iterations": {"1": {"prev": "2", "train": "sft"}, "2": {"prev": "1", "train": "sft"}}}}, "cycle"),
    ({"loop": {"iterations": {"1": {"prev": "7", "train": "sft"}}}}, "names '7', which is not an iteration"),
    ({"loop": {"iterations": {"1": {"prev": "0"}}}}, "loop.iterations.1.train: Field required"),
    ({"loop": {"iterations": {"1": {"prev": "0", "train": "dpo"}}}}, "loop.iterations.1.train"),
])
def test_bad_values_are_named_by_section_key_and_value(change, message):
    with pytest.raises(ValueError) as error:
        config.parse(change, "params.yaml")
    assert message in str(error.value)
    assert str(error.value).startswith("params.yaml: ")


def test_a_stage_reads_only_what_it_declares(tmp_path, monkeypatch):
    monkeypatch.setenv(config.RECORD_READS_ENV, str(tmp_path / "reads.tsv"))
    view = config.StageParams(config.Params(), ("seed", "world.colours", "sample"), "sample")
    assert view.seed == 0 and view.world.colours[0] == "red" and view.sample.budget == 4000
    with pytest.raises(KeyError, match="stage 'sample' reads params key 'world.shapes' but does not declare it"):
        view.world.shapes
    with pytest.raises(KeyError, match="'train'"):
        view.train
    assert (tmp_path / "reads.tsv").read_text().split("\n")[:3] == ["sample\tseed", "sample\tworld.colours",
                                                                    "sample\tsample"]


def test_ancestry_and_stage_seeds():
    loop = config.LoopConfig(iterations={"1": config.Iteration(prev="0", train="sft"),
                                         "2": config.Iteration(prev="1", train="sft")})
    assert config.ancestry(loop, "2") == ["2", "1", "0"]
    with pytest.raises(KeyError, match="'7'"):
        config.ancestry(loop, "7")
    seed = config.stage_seed
    assert seed(0, "sample", "1") == seed(0, "sample", "1") != seed(0, "sample", "2")
    assert seed(0, "sample", "1") != seed(1, "sample", "1")
    # loop.seed varies the iterations' draws, never the base model's.
    assert seed(0, "sample", "1", loop_seed=0) != seed(0, "sample", "1", loop_seed=1)
    assert seed(0, "base", loop_seed=0) == seed(0, "base", loop_seed=1)
