"""The history of the loop: accuracy per iteration and category, as CSV and HTML."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any

_ITERATION_FILE = re.compile(r"iter=(\d+)\.json$")


def collect(eval_dir: str | Path) -> list[dict[str, Any]]:
    """One row per evaluated model: iteration, overall accuracy, then one column per category."""
    eval_dir = Path(eval_dir)
    rows = []
    for path in eval_dir.glob("iter=*.json"):
        match = _ITERATION_FILE.search(path.name)
        if not match:
            continue
        try:
            metrics = json.loads(path.read_text(encoding="utf-8"))
            row = {"iteration": int(match.group(1)), "overall": float(metrics["overall"])}
            row.update({name: float(value) for name, value in sorted(metrics["categories"].items())})
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{path}: expected {{'overall': float, 'categories': {{name: float}}}} ({err})") from None
        rows.append(row)
    if not rows:
        raise FileNotFoundError(f"{eval_dir}: no iter=N.json evaluation metrics found")
    return sorted(rows, key=lambda row: row["iteration"])


def write_history(rows: list[dict[str, Any]], csv_path: str | Path) -> None:
    import csv
    import io

    from mmloop.io import write_text

    columns = list(dict.fromkeys(name for row in rows for name in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({name: (f"{row[name]:.4f}" if isinstance(row.get(name), float) else row.get(name))
                         for name in columns})
    write_text(csv_path, buffer.getvalue())


def markdown(rows: list[dict[str, Any]]) -> str:
    """The history as a Markdown table (accuracy to three places), with the last row's gain over
    the first in points: what the README shows, generated rather than typed."""
    columns = [name for name in dict.fromkeys(name for row in rows for name in row) if name != "iteration"]
    lines = ["| iteration | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for row in rows:
        cells = [f"{row[name]:.3f}".lstrip("0") if name in row else "-" for name in columns]
        lines.append(f"| {row['iteration']} | " + " | ".join(cells) + " |")
    if len(rows) > 1:
        first, last = rows[0], rows[-1]
        gains = [f"{100 * (last[name] - first[name]):+.1f}" if name in first and name in last else "-"
                 for name in columns]
        lines.append(f"| gain {first['iteration']}→{last['iteration']} (points) | " + " | ".join(gains) + " |")
    return "\n".join(lines)


def write_html(rows: list[dict[str, Any]], html_path: str | Path) -> None:
    """A self-contained page: accuracy table with the change against the first model."""
    from mmloop.io import write_text

    columns = [name for name in rows[0] if name != "iteration"]
    first = rows[0]
    header = "".join(f"<th>{html.escape(name)}</th>" for name in columns)
    body = []
    for row in rows:
        cells = []
        for name in columns:
            value = row.get(name)
            if value is None:
                cells.append("<td></td>")
                continue
            delta = value - first.get(name, value)
            colour = "#1a7f37" if delta > 0.005 else "#cf222e" if delta < -0.005 else "#57606a"
            cells.append(f"<td>{value:.3f} <small style='color:{colour}'>({delta:+.3f})</small></td>")
        body.append(f"<tr><th>{row['iteration']}</th>{''.join(cells)}</tr>")
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>mmloop history</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #d0d7de;padding:.3em .6em;text-align:right}}</style></head>
<body><h1>Benchmark accuracy per iteration</h1>
<p>Iteration 0 is the base model; the change is against it.</p>
<table><tr><th>iteration</th>{header}</tr>
{''.join(body)}
</table></body></html>
"""
    write_text(html_path, page)
