import hashlib
import time

import pytest

from mmloop import schema
from mmloop.validation import ValidationError, validate


def store_image(data_root, payload: bytes) -> tuple[str, str]:
    """Put bytes into the content-addressed store; return (relative path, sha256)."""
    sha = hashlib.sha256(payload).hexdigest()
    relative = f"images/{sha[:2]}/{sha}.png"
    path = data_root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(payload)
    return relative, sha


def make_row(sample_id, image, sha, *, origin="generated", iteration=1, **fields):
    values = dict(
        sample_id=sample_id, parent_ids=["q-1"], iteration=iteration, origin=origin, image=image, image_sha256=sha,
        conversations=[{"role": "user", "content": "What colour is the circle?"},
                       {"role": "assistant", "content": "B"}],
        category="colour", format="mcq", question="What colour is the circle?",
        options=["red", "blue", "green", "yellow"], answer="blue",
    )
    values.update(fields)
    return schema.sample(**values)


@pytest.fixture
def images(tmp_path):
    return [store_image(tmp_path, f"png-{index}".encode()) for index in range(3)]


@pytest.fixture
def good_rows(images):
    return [make_row(f"gen-{index}", *images[index]) for index in range(3)]


def check_fails(rows, suite, tmp_path, *, ids, expectation, iteration=None, source="data/iter=1/generated.parquet"):
    with pytest.raises(ValidationError) as caught:
        validate(rows, suite, source=source, iteration=iteration, data_root=tmp_path)
    message = str(caught.value)
    assert source in message
    assert expectation in message
    for sample_id in ids:
        assert sample_id in message
    return caught.value


def test_samples_pass(good_rows, tmp_path):
    validate(good_rows, "samples", source="x.parquet", iteration=1, data_root=tmp_path)


def test_samples_pass_from_parquet_dataframe(good_rows, tmp_path):
    import pandas as pd

    path = tmp_path / "rows.parquet"
    schema.write_samples(good_rows, path)
    validate(pd.read_parquet(path), "samples", source=path, iteration=1, data_root=tmp_path)


def test_empty_table_passes(tmp_path):
    import pandas as pd

    validate(pd.DataFrame(columns=schema.sample_schema().names), "samples", source="empty.parquet",
             data_root=tmp_path)


def test_duplicate_id(good_rows, tmp_path):
    good_rows[2]["sample_id"] = "gen-0"
    error = check_fails(good_rows, "samples", tmp_path, ids=["gen-0"], expectation="be_unique")
    assert "gen-1" not in str(error)


def test_null_id_is_named_by_row(good_rows, tmp_path):
    good_rows[1]["sample_id"] = None
    check_fails(good_rows, "samples", tmp_path, ids=["row 1"], expectation="not_be_null")


def test_answer_not_among_options(good_rows, tmp_path):
    good_rows[1]["answer"] = "purple"
    error = check_fails(good_rows, "samples", tmp_path, ids=["gen-1"], expectation="check_answer_in_options")
    assert "gen-0" not in str(error)


def test_short_answer_need_not_be_an_option(good_rows, tmp_path):
    good_rows[1].update(format="short", options=[], answer="The circle is blue.")
    validate(good_rows, "samples", source="x", data_root=tmp_path)


def test_missing_image(good_rows, tmp_path):
    good_rows[0]["image"] = "images/00/missing.png"
    check_fails(good_rows, "samples", tmp_path, ids=["gen-0"], expectation="check_image_exists")


def test_wrong_hash(good_rows, images, tmp_path):
    good_rows[2]["image_sha256"] = images[0][1]
    error = check_fails(good_rows, "samples", tmp_path, ids=["gen-2"], expectation="check_image_sha256_matches")
    assert "check_image_exists" not in str(error)


def test_score_out_of_range(good_rows, tmp_path):
    good_rows[0]["scores"]["clip"] = 1.5
    good_rows[1]["scores"]["judge"] = 0.0
    good_rows[2]["scores"]["visual_independence"] = 0.5  # in range, and nulls elsewhere are fine
    error = check_fails(good_rows, "samples", tmp_path, ids=["gen-0", "gen-1"], expectation="scores.clip")
    assert "scores.judge" in str(error)
    assert "visual_independence" not in str(error)


def test_wrong_iteration(good_rows, tmp_path):
    good_rows[1]["iteration"] = 2
    check_fails(good_rows, "samples", tmp_path, ids=["gen-1"], expectation="'iteration'", iteration=1)


def test_origin_not_allowed_for_suite(good_rows, tmp_path):
    good_rows[0]["origin"] = "query"
    check_fails(good_rows, "samples", tmp_path, ids=["gen-0"], expectation="'origin'")


def test_rejected_row_needs_reason(good_rows, tmp_path):
    good_rows[0].update(kept=False, reject_reason=None)
    good_rows[1].update(kept=False, reject_reason="clip_low")
    good_rows[2].update(kept=True, reject_reason=None)
    error = check_fails(good_rows, "samples", tmp_path, ids=["gen-0"], expectation="check_verdict_consistent")
    assert "gen-1" not in str(error)


def test_every_declared_reject_reason_is_accepted_and_no_other(images, tmp_path):
    rows = [make_row(f"gen-{reason}", *images[0], kept=False, reject_reason=reason) for reason in schema.REJECT_REASONS]
    validate(rows, "samples", source="rejected.parquet", iteration=1, data_root=tmp_path)
    rows.append(make_row("gen-typo", *images[1], kept=False, reject_reason="clip_lo"))
    error = check_fails(rows, "samples", tmp_path, ids=["gen-typo"], expectation="check_verdict_consistent")
    assert "gen-clip_low" not in str(error)


def query_rows(images):
    return [make_row(f"que-{index}", *images[index], origin="query", conversations=[], format="mcq",
                     question=None, options=[], answer=None, parent_ids=[f"badcase-0-shapes-{index}"],
                     scores={"clip": 0.8})
            for index in range(3)]


def test_queries_pass_and_fail(images, tmp_path):
    rows = query_rows(images)
    validate(rows, "queries", source="data/iter=1/queries.parquet", iteration=1, data_root=tmp_path)
    rows[0]["parent_ids"] = []
    rows[1]["scores"]["clip"] = -3.0
    rows[2]["sample_id"] = "que-1"
    error = check_fails(rows, "queries", tmp_path, ids=["que-0", "que-1"], expectation="check_has_parent",
                        source="data/iter=1/queries.parquet")
    assert "scores.clip" in str(error) and "be_unique" in str(error)


def test_queries_need_an_image(images, tmp_path):
    rows = query_rows(images)
    rows[2].update(image=None, image_sha256=None)
    check_fails(rows, "queries", tmp_path, ids=["que-2"], expectation="check_image_exists",
                source="queries.parquet")


def test_random_query_needs_no_parent(images, tmp_path):
    rows = query_rows(images)
    rows[0].update(parent_ids=[], provenance={"operator": "random"})
    validate(rows, "queries", source="queries.parquet", data_root=tmp_path)
    rows[0]["provenance"]["operator"] = "neighbour"
    check_fails(rows, "queries", tmp_path, ids=["que-0"], expectation="check_has_parent", source="queries.parquet")


def badcase_rows(images):
    return [make_row(f"badcase-0-shapes-{index}", *images[index], origin="badcase", iteration=0)
            for index in range(3)]


def test_badcases_pass_and_fail(images, tmp_path):
    rows = badcase_rows(images)
    validate(rows, "badcases", source="data/iter=0/eval/badcases.parquet", iteration=0, data_root=tmp_path)
    rows[0]["sample_id"] = "gen-x"
    rows[1]["answer"] = "not an option"
    rows[2]["iteration"] = 3
    error = check_fails(rows, "badcases", tmp_path, ids=["gen-x", "badcase-0-shapes-1", "badcase-0-shapes-2"],
                        expectation="match_regex", iteration=0, source="data/iter=0/eval/badcases.parquet")
    assert "check_answer_in_options" in str(error)


def prediction_rows():
    return [dict(item=f"shapes-{index}", benchmark="shapes", model="models/iter=1", iteration=1, mode="mcq",
                 category="count", l2_category="perception", question="How many circles?",
                 options=["1", "2", "3", "4"], answer="B", prediction="B" if index else "none",
                 correct=bool(index), option_scores=[0.1, 0.6, 0.2, 0.1], latency_ms=3.0, image_sha256="ab")
            for index in range(3)]


def test_predictions_pass_and_fail(tmp_path):
    rows = prediction_rows()
    validate(rows, "predictions", source="data/iter=1/eval/predictions.parquet", iteration=1)
    rows[0]["prediction"] = "E"        # only four options
    rows[1]["correct"] = "yes"
    rows[2]["item"] = "shapes-1"
    error = check_fails(rows, "predictions", tmp_path, ids=["shapes-0", "shapes-1"],
                        expectation="check_prediction_valid", source="data/iter=1/eval/predictions.parquet")
    message = str(error)
    assert "check_correct_is_bool" in message and "prediction_key" in message


def test_yes_no_predictions_pass_and_fail(tmp_path):
    rows = [dict(item=f"pope-{index}", benchmark="pope", model="m", iteration=0, mode="loglik",
                 answer_type="yes_no", category="random", question="Is there a dog in the image?", options=[],
                 answer="yes", prediction=prediction, correct=prediction == "yes", option_scores=[-0.2, -1.9],
                 latency_ms=1.0, image_sha256="ab", rounds=0)
            for index, prediction in enumerate(["yes", "no", "none"])]
    validate(rows, "predictions", source="pope/predictions.parquet", iteration=0)
    rows[1]["prediction"] = "A"                     # a letter is no yes/no answer
    rows[2]["option_scores"] = [-0.2, -1.9, -3.0]   # a yes/no item scores two replies
    check_fails(rows, "predictions", tmp_path, ids=["pope-1", "pope-2"], expectation="check_prediction_valid",
                source="pope/predictions.parquet")


def test_predictions_wrong_iteration_from_parquet(tmp_path):
    import pandas as pd

    rows = prediction_rows()
    rows[2]["iteration"] = 0
    path = tmp_path / "predictions.parquet"
    schema.write_samples(rows, path, schema=schema.prediction_schema())
    frame = pd.read_parquet(path)
    check_fails(frame, "predictions", tmp_path, ids=["shapes-2"], expectation="'iteration'", iteration=1,
                source=str(path))


def test_unknown_suite(good_rows, tmp_path):
    with pytest.raises(ValueError, match="unknown validation suite"):
        validate(good_rows, "nope", source="x", data_root=tmp_path)


def test_missing_column_names_file_and_column(tmp_path):
    with pytest.raises(ValidationError, match=r"(?s)bad\.parquet.*missing: image_sha256"):
        validate([{"sample_id": "a", "iteration": 1, "origin": "seed", "image": None, "conversations": [],
                   "format": "mcq", "options": [], "answer": None, "parent_ids": []}],
                 "samples", source="bad.parquet", data_root=tmp_path)


def test_many_rows_validate_in_seconds(images, tmp_path):
    # 40k rows over a few hundred distinct images: each image is hashed once.
    more = images + [store_image(tmp_path, f"extra-{index}".encode()) for index in range(300)]
    rows = [make_row(f"gen-{index}", *more[index % len(more)]) for index in range(40_000)]
    start = time.perf_counter()
    validate(rows, "samples", source="big.parquet", iteration=1, data_root=tmp_path)
    assert time.perf_counter() - start < 30


def test_badcase_image_may_live_only_in_the_benchmark_but_needs_its_hash(images, tmp_path):
    rows = badcase_rows(images)
    rows[0]["image"] = None  # the benchmark file holds it; the hash still names it
    validate(rows, "badcases", source="badcases.parquet", iteration=0, data_root=tmp_path)
    rows[0]["image_sha256"] = None
    check_fails(rows, "badcases", tmp_path, ids=["badcase-0-shapes-0"],
                expectation="check_image_sha256_matches", source="badcases.parquet")
