import pytest

from mmloop import schema


def test_sample_fills_every_field_and_round_trips(tmp_path):
    record = schema.sample(sample_id="x", iteration=1, origin="generated",
                           conversations=[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                           provenance={"backend": "annotations", "program": {"family": "count"}})
    assert set(record) == set(schema.sample_schema().names)
    assert record["provenance"]["program"] == '{"family": "count"}'
    assert record["scores"]["clip"] is None
    path = tmp_path / "s.parquet"
    assert schema.write_samples([record], path) == 1
    assert schema.read_samples(path) == [record]


def test_unknown_field_is_refused():
    with pytest.raises(KeyError, match="colour"):
        schema.sample(sample_id="x", colour="red")


def test_sample_id_depends_on_content():
    turns = [{"role": "user", "content": "q"}]
    first = schema.make_sample_id("abc", turns, "seed")
    assert first == schema.make_sample_id("abc", turns, "seed")
    assert first != schema.make_sample_id("abd", turns, "seed")
    assert first != schema.make_sample_id("abc", turns, "generated")
