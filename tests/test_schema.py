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


def test_reject_reasons_are_named_once_and_group_by_who_rejects():
    assert len(set(schema.REJECT_REASONS)) == len(schema.REJECT_REASONS)
    assert set(schema.REJECT_REASONS) == {*schema.ELIMINATION_REASONS, *schema.EVOLUTION_REASONS,
                                          *schema.TEACHER_REASONS}
    # Elimination checks answers before CLIP, and exact before near duplicates.
    assert schema.ELIMINATION_REASONS == ("answer_mismatch", "clip_low", "duplicate", "near_duplicate")
