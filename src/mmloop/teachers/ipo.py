"""Interactive Prompt Optimization (IPO, from MLLM-DataEngine): a person and the teacher refine the prompt.

- `review` writes one self-contained HTML page for an iteration: the generated
  items with their images, grouped by prompt version and by outcome (kept;
  rejected by reason; skipped; failed to parse; request failed), so a person
  sees at a glance what the prompt gets wrong.
- `prompt_version_metrics` gives keep-rate, skip-rate and parse-failure rate
  per prompt version (the generate and eliminate stages put them in metrics,
  so `dvc exp show` compares prompt versions).
- `propose` asks the teacher for a revised template from the failure cases
  and writes it as a new versioned file with `status: proposed`. Nothing uses
  it until a person reviews it, sets `status: approved`, and points
  `generate.openai.prompt` at it (the openai teacher refuses proposed templates).
"""

from __future__ import annotations

import base64
import html
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmloop.teachers import structured
from mmloop.teachers.base import PARSE_FAILED, REJECTED_OUTCOMES, REQUEST_FAILED, SKIPPED

if TYPE_CHECKING:
    from mmloop.config import OpenAIConfig

MAX_CARDS_PER_GROUP = 24


# --- reading an iteration ----------------------------------------------------------------------
def load_iteration(iteration: int | str, data_root: str | Path = "data") -> list[dict[str, Any]]:
    """Generated rows of an iteration, with elimination verdicts merged in when they exist."""
    from mmloop.schema import read_samples

    folder = Path(data_root) / f"iter={iteration}"
    generated = folder / "generated.parquet"
    if not generated.exists():
        raise FileNotFoundError(f"{generated}: no generated samples for iteration {iteration}")
    rows = {row["sample_id"]: row for row in read_samples(generated)}
    for name in ("kept.parquet", "rejected.parquet"):
        if (folder / name).exists():
            for row in read_samples(folder / name):
                if row["sample_id"] in rows:
                    rows[row["sample_id"]].update(kept=row["kept"], reject_reason=row["reject_reason"])
    return list(rows.values())


def prompt_version(row: Mapping[str, Any]) -> str:
    provenance = row.get("provenance") or {}
    sha = (provenance.get("prompt_sha256") or "")[:8]
    return f"{provenance.get('prompt_id') or 'unknown'} ({sha})" if sha else str(provenance.get("prompt_id"))


def outcome(row: Mapping[str, Any]) -> str:
    reason = row.get("reject_reason")
    if reason in REJECTED_OUTCOMES:
        return reason
    if row.get("kept") is True:
        return "kept"
    if row.get("kept") is False:
        return f"rejected: {reason}"
    return "not yet judged"


def prompt_version_metrics(records: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per prompt version, over requests (one request may yield several items):
    keep_rate (requests with a kept item, or with a generated item before elimination),
    skip_rate, parse_failure_rate, request_failure_rate."""
    requests: dict[str, dict[str, set]] = defaultdict(lambda: defaultdict(set))
    for row in records:
        provenance = row.get("provenance") or {}
        request = provenance.get("request_hash") or row["sample_id"]
        requests[prompt_version(row)][outcome(row)].add(request)
    metrics = {}
    for version, by_outcome in sorted(requests.items()):
        total = len(set().union(*by_outcome.values())) or 1
        judged = any(name == "kept" or name.startswith("rejected") for name in by_outcome)
        keepers = by_outcome.get("kept", set()) if judged else by_outcome.get("not yet judged", set())
        metrics[version] = {
            "requests": total, "keep_rate": len(keepers) / total,
            "skip_rate": len(by_outcome.get(SKIPPED, ())) / total,
            "parse_failure_rate": len(by_outcome.get(PARSE_FAILED, ())) / total,
            "request_failure_rate": len(by_outcome.get(REQUEST_FAILED, ())) / total,
            "outcomes": {name: len(ids) for name, ids in sorted(by_outcome.items())},
        }
    return metrics


def failure_detail(row: Mapping[str, Any]) -> str:
    """Why a reply failed to parse, recomputed from its raw text (parsing is deterministic)."""
    turns = row.get("conversations") or []
    prompt = turns[0]["content"] if turns else ""
    raw = turns[-1]["content"] if len(turns) > 1 else ""
    match = re.search(r"Data type: (\w+)", prompt)
    data_type = match.group(1) if match and match.group(1) in structured.DATA_TYPES else "mcq"
    return structured.parse_reply(raw, data_type).reason or ""


# --- the HTML page -----------------------------------------------------------------------------
_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
h2{border-bottom:2px solid #ccc;margin-top:2em} h3{margin:1.2em 0 .4em}
table{border-collapse:collapse} td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
.grid{display:flex;flex-wrap:wrap;gap:.6em}
.card{border:1px solid #ddd;border-radius:6px;padding:.5em;width:300px;font-size:.85em;background:#fafafa}
.card img{width:96px;height:96px;image-rendering:pixelated;float:left;margin:0 .5em .3em 0;border:1px solid #ccc}
.kept{border-left:5px solid #2a2} .rejected{border-left:5px solid #d80} .failed{border-left:5px solid #c22}
pre{white-space:pre-wrap;word-break:break-word;max-height:12em;overflow:auto;background:#fff;margin:.3em 0;clear:both}
.reason{color:#a33;font-weight:600}
"""


def _image_tag(row: Mapping[str, Any], data_root: Path, cache: dict[str, str]) -> str:
    image = row.get("image")
    if not image:
        return ""
    if image not in cache:
        path = data_root / image
        data = path.read_bytes() if path.exists() else b""
        cache[image] = f'<img src="data:image/png;base64,{base64.b64encode(data).decode()}" alt="{html.escape(image)}">' \
            if data else f"<div>missing image {html.escape(image)}</div>"
    return cache[image]


def _card(row: Mapping[str, Any], data_root: Path, cache: dict[str, str]) -> str:
    name = outcome(row)
    css = "kept" if name == "kept" else "failed" if name in REJECTED_OUTCOMES else "rejected"
    parts = [f'<div class="card {css}">', _image_tag(row, data_root, cache),
             f"<b>{html.escape(str(row.get('category')))}</b> · {html.escape(str(row.get('format')))}<br>",
             f"<small>{html.escape(row['sample_id'])}</small>"]
    if name in REJECTED_OUTCOMES:
        turns = row.get("conversations") or []
        raw = turns[-1]["content"] if len(turns) > 1 else ""
        if name == PARSE_FAILED:
            parts.append(f'<div class="reason">{html.escape(failure_detail(row))}</div>')
        parts.append(f"<pre>{html.escape(raw or '(no reply)')}</pre>")
    else:
        parts.append(f"<pre>{html.escape(str(row.get('question') or ''))}</pre>")
        if row.get("options"):
            marks = [f"{'<b>' if o == row.get('answer') else ''}{html.escape(o)}{'</b>' if o == row.get('answer') else ''}"
                     for o in row["options"]]
            parts.append("options: " + " / ".join(marks))
        else:
            parts.append(f"answer: {html.escape(str(row.get('answer') or ''))}")
        scores = {k: v for k, v in (row.get("scores") or {}).items() if v is not None}
        if scores:
            parts.append("<br><small>" + html.escape(", ".join(f"{k}={v:.3g}" for k, v in scores.items())) + "</small>")
    parts.append("</div>")
    return "".join(parts)


def render_review(records: Sequence[Mapping[str, Any]], *, title: str, data_root: str | Path = "data") -> str:
    data_root = Path(data_root)
    metrics = prompt_version_metrics(records)
    by_version: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for row in records:
        by_version[prompt_version(row)][outcome(row)].append(row)
    order = ["kept", "not yet judged"]
    cache: dict[str, str] = {}
    body = [f"<h1>{html.escape(title)}</h1>", "<table><tr><th>prompt version</th><th>requests</th><th>keep</th>"
            "<th>skip</th><th>parse failure</th><th>request failure</th></tr>"]
    for version, m in metrics.items():
        body.append(f"<tr><td>{html.escape(version)}</td><td>{m['requests']}</td><td>{m['keep_rate']:.1%}</td>"
                    f"<td>{m['skip_rate']:.1%}</td><td>{m['parse_failure_rate']:.1%}</td>"
                    f"<td>{m['request_failure_rate']:.1%}</td></tr>")
    body.append("</table>")
    for version in sorted(by_version):
        groups = by_version[version]
        body.append(f"<h2>{html.escape(version)}</h2>")
        names = sorted(groups, key=lambda n: (n not in order, order.index(n) if n in order else 0, n))
        for name in names:
            rows = sorted(groups[name], key=lambda r: (str(r.get("category")), r["sample_id"]))
            reasons = Counter(str(r.get("category")) for r in rows)
            body.append(f"<h3>{html.escape(name)} — {len(rows)} "
                        f"<small>({html.escape(', '.join(f'{c}: {n}' for c, n in sorted(reasons.items())))})</small></h3>")
            body.append('<div class="grid">' + "".join(_card(r, data_root, cache) for r in rows[:MAX_CARDS_PER_GROUP])
                        + "</div>")
            if len(rows) > MAX_CARDS_PER_GROUP:
                body.append(f"<p>… and {len(rows) - MAX_CARDS_PER_GROUP} more</p>")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body>{''.join(body)}</body></html>\n")


def review(iteration: int | str, out_path: str | Path, data_root: str | Path = "data") -> dict[str, dict[str, Any]]:
    """Write the IPO review page for `iteration` to `out_path`; returns the per-version metrics."""
    from mmloop.io import write_text

    records = load_iteration(iteration, data_root)
    write_text(out_path, render_review(records, title=f"mmloop prompt review — iteration {iteration}",
                                       data_root=data_root))
    return prompt_version_metrics(records)


# --- proposing a revision ----------------------------------------------------------------------
def failure_cases(records: Sequence[Mapping[str, Any]], limit: int = 12) -> list[dict[str, Any]]:
    """Failure cases for the teacher, spread over outcomes (round-robin) so one kind does not crowd out the rest."""
    groups: dict[str, list] = defaultdict(list)
    for row in sorted(records, key=lambda r: r["sample_id"]):
        name = outcome(row)
        if name not in ("kept", "not yet judged"):
            groups[name].append(row)
    cases, queues = [], [list(rows) for _, rows in sorted(groups.items())]
    while len(cases) < limit and any(queues):
        for queue in queues:
            if queue and len(cases) < limit:
                row = queue.pop(0)
                turns = row.get("conversations") or []
                name = outcome(row)
                cases.append({"outcome": name, "category": row.get("category"), "question": row.get("question"),
                              "reason": failure_detail(row) if name == PARSE_FAILED else (row.get("reject_reason") or name),
                              "raw": turns[-1]["content"] if turns else ""})
    return cases


def extract_template(reply: str) -> str:
    match = re.search(r"<template>\n?(.*?)</template>", reply or "", re.S)
    if not match or not match.group(1).strip():
        raise ValueError("the teacher's reply has no <template>...</template> block")
    return match.group(1)


def propose(iteration: int | str, template_path: str | Path, config: "OpenAIConfig", *,
            data_root: str | Path = "data", propose_template: str | Path = "prompts/propose.j2",
            max_cases: int = 12) -> Path:
    """Ask the teacher (params generate.openai) to revise `template_path` from iteration's failures;
    write it as a new version.

    Returns the path of the new file (e.g. prompts/generate.v2.j2), written with
    `status: proposed`; it is never used until a person approves it.
    """
    from mmloop.io import write_text
    from mmloop.teachers import journal as journal_mod
    from mmloop.teachers import llm, prompts

    records = load_iteration(iteration, data_root)
    current = prompts.load_template(template_path)
    cases = failure_cases([r for r in records if (r.get("provenance") or {}).get("prompt_sha256") == current.file_sha256]
                          or records, max_cases)
    if not cases:
        raise ValueError(f"iteration {iteration}: no failure cases for {current.name}; nothing to improve from")
    summary = prompt_version_metrics(records).get(
        f"{current.name} ({current.file_sha256[:8]})", {"outcomes": {}})["outcomes"]
    asking = prompts.load_template(propose_template)
    rendered = asking.render(template_name=current.name, summary=summary, failures=cases, current_body=current.body)
    messages = [{"role": "user", "content": rendered.text}]
    key = journal_mod.request_key(config.model, messages, config.generation, asking.file_sha256)
    with journal_mod.Journal(llm.journal_path(config)) as journal:
        results, _ = llm.run_chat([llm.ChatRequest(key, messages, label=f"propose:{current.name}")],
                                  config, journal, desc="propose")
    body = extract_template(results[0].content)
    version = prompts.next_version(template_path)
    meta = {"id": current.id, "version": version, "task": current.task, "status": "proposed",
            "parent": f"{current.name} {current.file_sha256}", "output_schema": current.output_schema, **{
                k: v for k, v in current.meta.items() if k not in ("status", "parent")}}
    text = prompts.with_front_matter(meta, body)
    out = prompts.versioned_path(template_path, version)
    prompts.parse_template(text, out)  # the revision must load and compile before anyone sees it
    if out.exists():
        raise FileExistsError(f"{out}: already exists; not overwriting a prompt version")
    write_text(out, text)
    return out
