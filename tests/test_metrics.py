"""Metrics over prediction rows (the generic ones and each benchmark's own), on small hand-made sets
with hand-computed values."""

import math

import pytest

from mmloop.eval import metrics
from mmloop.eval.benchmarks.aokvqa import aokvqa_direct, normalise_answer
from mmloop.eval.benchmarks.mme import mme as mme_scores
from mmloop.eval.benchmarks.pope import pope as pope_scores
from mmloop.eval.evaluation import summary


def row(item, answer, prediction, *, benchmark="bench", category="color", l2_category=None, group=None,
        answer_type="mcq", options=("red", "blue", "green", "white"), direct_answers=()):
    return {"item": f"{benchmark}-{item}", "benchmark": benchmark, "answer_type": answer_type,
            "category": category, "l2_category": l2_category, "group": group,
            "options": list(options) if answer_type == "mcq" else [], "answer": answer,
            "prediction": prediction, "correct": prediction == answer, "direct_answers": list(direct_answers)}


def circular_rows():
    # Item 1: its 4 rotations all right. Item 2: one rotation wrong. Item 3: a single row, right.
    return ([row(f"{k}000001", "A", "A", group="1", category="count", l2_category="reasoning")
             for k in range(4)]
            + [row(f"{k}000002", "B", "C" if k == 3 else "B", group="2", category="count",
                   l2_category="reasoning") for k in range(4)]
            + [row("3", "A", "A", category="shape", l2_category="perception")])


# ---------------------------------------------------------------- exact match

def test_accuracy_by_hand():
    rows = circular_rows() + [row("4", "A", "none", category=float("nan"))]
    expected = metrics.accuracy(rows)
    assert expected["overall"] == pytest.approx(8 / 10)
    assert expected["categories"] == {"count": 7 / 8, "shape": 1.0}
    assert expected["n_per_category"] == {"count": 8, "shape": 1}
    assert expected["l2_categories"] == {"perception": 1.0, "reasoning": 7 / 8}


@pytest.mark.parametrize("metric", [metrics.accuracy, metrics.circular, mme_scores, pope_scores, aokvqa_direct,
                                    summary])
def test_no_rows_is_an_error(metric):
    with pytest.raises(ValueError, match=f"{metric.__name__}: no predictions"):
        metric([])


# ---------------------------------------------------------------- CircularEval

def test_circular_counts_a_group_right_only_when_every_rotation_is():
    rows = circular_rows()
    result = metrics.circular(rows)
    assert result["n"] == 3
    assert result["overall"] == pytest.approx(2 / 3)  # item 2 has one wrong rotation
    assert result["categories"] == {"count": 0.5, "shape": 1.0}
    assert result["l2_categories"] == {"perception": 1.0, "reasoning": 0.5}
    assert result["n_per_category"] == {"count": 2, "shape": 1}
    # Exact match counts rows: 8 of 9 right.
    assert metrics.accuracy(rows)["overall"] == pytest.approx(8 / 9)


def test_circular_keeps_benchmarks_apart():
    rows = [row("1", "A", "A", group="1"), row("2", "A", "B", group="1", benchmark="other")]
    assert metrics.circular(rows)["n"] == 2


def test_a_group_with_mixed_categories_is_an_error():
    rows = [row("1", "A", "A", group="7", category="color"), row("2", "A", "A", group="7", category="count")]
    with pytest.raises(ValueError, match="'7'"):
        metrics.circular(rows)


# ---------------------------------------------------------------- A-OKVQA

def test_aokvqa_direct_answer_is_min_one_matches_over_three():
    ten = ["red"] * 4 + ["crimson"] * 2 + ["maroon"] + ["scarlet"] * 3
    rows = [
        row("1", "A", "A", direct_answers=ten),                  # "red": 4 matches -> 1
        row("2", "A", "C", options=("red", "blue", "crimson", "x"), direct_answers=ten),  # 2 -> 2/3
        row("3", "A", "C", options=("red", "blue", "Maroon.", "x"), direct_answers=ten),  # 1 -> 1/3
        row("4", "A", "B", direct_answers=ten),                  # "blue": 0
        row("5", "A", "none", direct_answers=ten),               # nothing extracted: 0
        row("6", "A", "A"),                                      # no direct answers: not scored
    ]
    result = aokvqa_direct(rows)
    assert result == {"direct_answer": pytest.approx((1 + 2 / 3 + 1 / 3 + 0 + 0) / 5), "n": 5}
    skipped = aokvqa_direct(rows, skip={"bench-4", "bench-5"})
    assert skipped == {"direct_answer": pytest.approx((1 + 2 / 3 + 1 / 3) / 3), "n": 3}


def test_aokvqa_normalisation():
    assert normalise_answer("The Red-Car!") == "red car"
    assert normalise_answer("an apple's core") == "apples core"
    assert normalise_answer("Two") == "2"
    assert normalise_answer("3.5 m.") == "3.5 m"
    rows = [row("1", "A", "A", options=("a stop sign", "x"), direct_answers=["stop sign", "Stop Sign", "sign"])]
    assert aokvqa_direct(rows)["direct_answer"] == pytest.approx(2 / 3)


def test_aokvqa_without_direct_answers_is_an_error():
    with pytest.raises(ValueError, match="direct answers"):
        aokvqa_direct([row("1", "A", "A")])


# ---------------------------------------------------------------- MME

def mme_rows():
    def yn(item, image, answer, prediction, category, l2):
        return row(item, answer, prediction, benchmark="mme", answer_type="yes_no", category=category,
                   l2_category=l2, group=image)
    return [
        # color: image 1 both right, image 2 one right -> acc 75, acc+ 50, score 125
        yn("1", "c1", "yes", "yes", "color", "perception"), yn("2", "c1", "no", "no", "color", "perception"),
        yn("3", "c2", "yes", "yes", "color", "perception"), yn("4", "c2", "no", "yes", "color", "perception"),
        # count: one image, both right -> 100 + 100
        yn("5", "n1", "yes", "yes", "count", "perception"), yn("6", "n1", "no", "no", "count", "perception"),
        # code_reasoning: one image, nothing extracted once -> 50 + 0
        yn("7", "r1", "yes", "yes", "code_reasoning", "cognition"),
        yn("8", "r1", "no", "none", "code_reasoning", "cognition"),
    ]


def test_mme_acc_plus_and_scores():
    result = mme_scores(mme_rows())
    color = result["subtasks"]["color"]
    assert (color["acc"], color["acc_plus"], color["score"]) == (75.0, 50.0, 125.0)
    assert (color["n"], color["n_images"], color["l2_category"]) == (4, 2, "perception")
    assert result["subtasks"]["count"]["score"] == 200.0
    assert result["subtasks"]["code_reasoning"]["acc_plus"] == 0.0
    assert result["perception"] == 325.0
    assert result["cognition"] == 50.0
    assert result["total"] == 375.0


# ---------------------------------------------------------------- POPE

def pope_rows():
    def yn(item, answer, prediction, category):
        return row(item, answer, prediction, benchmark="pope", answer_type="yes_no", category=category)
    return [
        yn("1", "yes", "yes", "random"), yn("2", "yes", "yes", "random"), yn("3", "yes", "no", "random"),
        yn("4", "no", "yes", "random"), yn("5", "no", "no", "random"),
        yn("6", "yes", "none", "adversarial"), yn("7", "no", "no", "adversarial"), yn("8", "no", "no", "adversarial"),
    ]


def test_pope_precision_recall_f1_and_yes_ratio():
    result = pope_scores(pope_rows())
    overall = result["overall"]
    # TP 2, FP 1, FN 2 (a "no" and a "none"), TN 3; 3 "yes" predictions of 8.
    assert overall["n"] == 8
    assert overall["accuracy"] == pytest.approx(5 / 8)
    assert overall["precision"] == pytest.approx(2 / 3)
    assert overall["recall"] == pytest.approx(2 / 4)
    assert overall["f1"] == pytest.approx(2 * (2 / 3) * (1 / 2) / (2 / 3 + 1 / 2))  # 4/7
    assert overall["yes_ratio"] == pytest.approx(3 / 8)
    random = result["categories"]["random"]
    assert (random["accuracy"], random["precision"], random["recall"]) == pytest.approx((3 / 5, 2 / 3, 2 / 3))
    assert random["f1"] == pytest.approx(2 / 3)
    adversarial = result["categories"]["adversarial"]
    # No "yes" predictions: precision guarded to 0.0, F1 0.0.
    assert adversarial == {"accuracy": pytest.approx(2 / 3), "precision": 0.0, "recall": 0.0, "f1": 0.0,
                           "yes_ratio": 0.0, "n": 3}


def test_pope_needs_yes_no_answers():
    with pytest.raises(ValueError, match="not yes/no"):
        pope_scores([row("1", "A", "A")])


# ---------------------------------------------------------------- summary

def test_summary_labels_exact_match_and_circular_apart():
    rows = circular_rows()
    result = summary(rows)
    assert set(result) == {"exact_match", "circular"}
    assert result["exact_match"]["overall"] == pytest.approx(8 / 9) and result["exact_match"]["n"] == 9
    assert result["circular"]["overall"] == pytest.approx(2 / 3) and result["circular"]["n"] == 3
    # No group with more than one row: no circular block.
    assert set(summary([row("1", "A", "A"), row("2", "A", "B")])) == {"exact_match"}


def test_summary_adds_the_benchmark_blocks():
    mme = summary(mme_rows(), "mme")
    assert set(mme) == {"exact_match", "circular", "mme"} and mme["mme"]["total"] == 375.0
    assert "mme" not in summary(mme_rows())
    pope = summary(pope_rows(), "pope")
    assert set(pope) == {"exact_match", "pope"}
    assert pope["pope"]["overall"]["f1"] == pytest.approx(4 / 7)
    aokvqa = summary([row("1", "A", "A", direct_answers=["red"] * 3), row("2", "A", "B")], "aokvqa")
    assert set(aokvqa) == {"exact_match", "aokvqa_direct"}
    assert aokvqa["aokvqa_direct"] == {"direct_answer": 1.0, "n": 1}
    assert not math.isnan(aokvqa["exact_match"]["overall"])
    # The formats without a metric of their own add nothing; a POPE run needs yes/no rows.
    for kind in ("mmbench", "seedbench", "jsonl"):
        assert set(summary(circular_rows(), kind)) == {"exact_match", "circular"}
    with pytest.raises(ValueError, match="benchmark kind 'pope' but no yes_no predictions"):
        summary([row("1", "A", "A")], "pope")
    with pytest.raises(ValueError, match="unknown benchmark kind 'vqav2'"):
        summary(circular_rows(), "vqav2")
