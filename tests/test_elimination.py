import json
from pathlib import Path

import pytest

from mmloop import schema, sources
from mmloop.config import EliminateConfig
from mmloop.loop import elimination
from mmloop.loop.elimination import eliminate

COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")
COLOURS_BY_HUE = ("red", "orange", "yellow", "green", "blue", "purple")


def short_row(sample_id, image_sha, question, answer, statement, *, program=None, category="colour"):
    conversations = [{"role": "user", "content": question}, {"role": "assistant", "content": statement}]
    return schema.sample(sample_id=sample_id, parent_ids=["que-x"], iteration=1, origin="generated",
                         image=f"images/{image_sha[:2]}/{image_sha}.png", image_sha256=image_sha,
                         conversations=conversations, category=category, format="short", question=question,
                         options=[], answer=answer, provenance={"backend": "annotations", "program": program})


class ColourScorer:
    """A stand-in with ClipScorer's interface, for unit tests only. Colours sit on a hue wheel
    (60 degrees apart); an image 'shows' the colour its file name starts with, a text is about
    the first colour word it names, and the score is the cosine of the hue difference."""

    def _vector(self, colour):
        import numpy as np

        angle = np.deg2rad(60 * COLOURS_BY_HUE.index(colour)) if colour in COLOURS_BY_HUE else 0.0
        return np.array([np.cos(angle), np.sin(angle)], dtype=np.float32)

    def embed_images(self, images, desc=None):
        import numpy as np

        return np.stack([self._vector(Path(image).stem.split("-")[0]) for image in images])

    def embed_texts(self, texts, desc=None):
        import numpy as np

        return np.stack([self._vector(next((w for w in t.lower().strip(".").split() if w in COLOURS), None))
                         for t in texts])


@pytest.fixture(scope="module")
def embedder():
    return elimination.load_text_embedder()


def test_exact_duplicate_and_near_duplicate_paraphrase(embedder):
    rows = [
        short_row("gen-a", "img1", "What colour is the circle?", "red", "The circle is red."),
        short_row("gen-b", "img1", "what colour is the circle", "red", "The circle is red."),        # exact
        short_row("gen-c", "img1", "What is the colour of the circle?", "red", "The circle is red."),  # paraphrase
        short_row("gen-d", "img2", "What colour is the circle?", "red", "The circle is red."),     # other image
        short_row("gen-e", "img1", "How many squares are there?", "2", "There are 2 squares."),   # other question
    ]
    result = eliminate(rows, objects_by_sha={}, embedder=embedder,
                       settings=EliminateConfig(near_duplicate=0.95))
    verdicts = {row["sample_id"]: (row["kept"], row["reject_reason"]) for row in result.rows}
    assert verdicts == {"gen-a": (True, None), "gen-b": (False, "duplicate"), "gen-c": (False, "near_duplicate"),
                        "gen-d": (True, None), "gen-e": (True, None)}
    clusters = {row["sample_id"]: row["scores"]["duplicate_cluster"] for row in result.rows}
    assert clusters["gen-a"] == clusters["gen-b"] == clusters["gen-c"]
    assert len({clusters["gen-a"], clusters["gen-d"], clusters["gen-e"]}) == 3
    assert result.stats["reasons"] == {"duplicate": 1, "near_duplicate": 1}
    assert result.stats["keep_rate"] == pytest.approx(3 / 5)


def test_without_embedder_only_exact_duplicates_are_found():
    rows = [short_row("gen-a", "img1", "What colour is the circle?", "red", "The circle is red."),
            short_row("gen-c", "img1", "What is the colour of the circle?", "red", "The circle is red."),
            short_row("gen-b", "img1", "What colour is the circle ?", "red", "The circle is red.")]
    result = eliminate(rows, objects_by_sha={})
    assert [row["reject_reason"] for row in result.rows] == [None, None, "duplicate"]


def test_clip_rejects_mismatched_caption_with_given_threshold():
    rows = [short_row(f"gen-{colour}", f"{colour}-img", "What colour is the circle?", colour,
                      f"The circle is {colour}.") for colour in COLOURS[:4]]
    rows.append(short_row("gen-wrong", "red-img2", "What colour is the square?", "blue", "The square is blue."))
    result = eliminate(rows, objects_by_sha={}, scorer=ColourScorer(), settings=EliminateConfig(clip_min=0.5))
    rejected = {row["sample_id"]: row["reject_reason"] for row in result.rejected}
    assert rejected == {"gen-wrong": "clip_low"}
    assert result.clip_min_source == "params"
    assert all(-1 <= row["scores"]["clip"] <= 1 for row in result.rows)


def test_clip_threshold_calibrated_on_mismatched_pairs():
    rows = [short_row(f"gen-{index}", f"{COLOURS[index % 6]}-img{index}", "What colour is the circle?",
                      COLOURS[index % 6], f"The circle is {COLOURS[index % 6]}.") for index in range(24)]
    # Its own image is red and the statement says green: it fits worse than a typical other image does.
    rows.append(short_row("gen-wrong", "red-img99", "What colour is the square?", "green", "The square is green."))
    result = eliminate(rows, objects_by_sha={}, scorer=ColourScorer(),
                       settings=EliminateConfig(clip_mismatch_quantile=0.5))
    assert result.clip_min_source == "calibrated"
    # Statements against other images score 1, 0.5, -0.5 or -1 here: the median lies between.
    assert -0.9 < result.clip_min < 0.9
    assert {row["sample_id"] for row in result.rejected} == {"gen-wrong"}
    assert result.stats["reasons"] == {"clip_low": 1}


def test_calibrate_clip_min_is_the_quantile():
    assert elimination.calibrate_clip_min([0.0, 0.1, 0.2, 0.3, 0.4], 0.5) == pytest.approx(0.2)
    assert elimination.calibrate_clip_min([], 0.5) is None


def test_rows_rejected_upstream_keep_their_reason():
    row = short_row("gen-skip", "img1", "?", None, "Skip")
    row.update(kept=False, reject_reason="skipped", format="open")
    result = eliminate([row], objects_by_sha={})
    assert result.rows[0]["reject_reason"] == "skipped"
    assert result.stats["reasons"] == {"skipped": 1}


def test_statement_uses_full_sentence_or_question_and_answer():
    short = short_row("gen-a", "img1", "What colour is the circle?", "red", "The circle is red.")
    assert elimination.statement(short) == "The circle is red."
    mcq = dict(short, format="mcq", options=["red", "blue"],
               conversations=[{"role": "user", "content": "..."}, {"role": "assistant", "content": "A"}])
    assert "red" in elimination.statement(mcq)
    assert elimination.statement(mcq) != "A"


def test_wrong_answer_is_rejected_as_answer_mismatch(tmp_path):
    from test_generation import run

    (rows, _), path = run(tmp_path)
    objects = sources.coco_objects(json.loads(path.read_text()))
    victim = dict(rows[0])
    options = list(victim["options"]) or ["not the answer"]
    victim["answer"] = next(option for option in options + ["not the answer"] if option != victim["answer"])
    victim["sample_id"] = "gen-injected"
    result = eliminate(rows + [victim], objects_by_sha=objects)
    verdict = next(row for row in result.rows if row["sample_id"] == "gen-injected")
    assert (verdict["kept"], verdict["reject_reason"]) == (False, "answer_mismatch")
    assert verdict["scores"]["judge"] == elimination.MISMATCH_SCORE
    assert all(row["scores"]["judge"] == elimination.VERIFIED_SCORE for row in result.rows if row is not verdict)


def test_rows_without_program_are_not_verified():
    row = short_row("gen-a", "img1", "What colour is the circle?", "red", "The circle is red.")
    assert elimination.verify_answer(row, {}) is None
    assert eliminate([row], objects_by_sha={}).rows[0]["scores"]["judge"] is None
