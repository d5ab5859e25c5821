import json

import pytest

from mmloop import report


def test_history_rows_sorted_by_iteration(tmp_path):
    for iteration, overall in [(2, 0.7), (0, 0.5), (1, 0.6)]:
        (tmp_path / f"iter={iteration}.json").write_text(
            json.dumps({"overall": overall, "categories": {"count": overall - 0.1, "colour": 0.9}}))
    rows = report.collect(tmp_path)
    assert [row["iteration"] for row in rows] == [0, 1, 2]
    report.write_history(rows, tmp_path / "history.csv")
    lines = (tmp_path / "history.csv").read_text().splitlines()
    assert lines[0] == "iteration,overall,colour,count"
    assert lines[1] == "0,0.5000,0.9000,0.4000"
    report.write_html(rows, tmp_path / "report.html")
    assert "(+0.200)" in (tmp_path / "report.html").read_text()


def test_bad_metrics_file_is_named(tmp_path):
    (tmp_path / "iter=0.json").write_text(json.dumps({"overall": 0.5}))
    with pytest.raises(ValueError, match="iter=0.json"):
        report.collect(tmp_path)


def test_markdown_table_has_a_row_per_iteration_and_the_gain_in_points():
    from mmloop import report

    rows = [{"iteration": 0, "overall": 0.5, "colour": 0.25}, {"iteration": 2, "overall": 0.625, "colour": 0.5}]
    lines = report.markdown(rows).splitlines()
    assert lines[0] == "| iteration | overall | colour |"
    assert lines[2] == "| 0 | .500 | .250 |" and lines[3] == "| 2 | .625 | .500 |"
    assert lines[4] == "| gain 0→2 (points) | +12.5 | +25.0 |"
