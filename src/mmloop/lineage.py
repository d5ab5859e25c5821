"""Lineage: trace any sample back through queries and bad cases to its images, and each
stored image back to the user's file(s) it was imported from.

Every stage writes sample-schema parquet under the data root, and every row
names its parents. DuckDB reads all of them at once (`union_by_name`, so files
with other columns, such as predictions, simply contribute nulls) and a
recursive query walks `parent_ids`. The image store's index (`<data root>/<store>/
index.parquet`, one row per original file) is joined on `image_sha256`, so a node
whose image is in the store lists the original file(s) it came from: the chain ends
at the user's photo, not at a content-addressed name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmloop.store import INDEX_NAME

# The same sample can sit in several files (generated, then kept, then a replay
# pool); show the row that carries the most: the elimination verdict first.
_FILE_RANK = """
CASE
  WHEN filename LIKE '%/kept.parquet' OR filename LIKE '%/rejected.parquet' THEN 0
  WHEN filename LIKE '%/replay_pool.parquet' THEN 2
  ELSE 1
END
"""

def _nodes_sql(data_root: Path) -> str:
    pattern = (data_root / "**" / "*.parquet").as_posix().replace("'", "''")
    return f"""
    SELECT * EXCLUDE (rank) FROM (
      SELECT *, row_number() OVER (PARTITION BY sample_id ORDER BY {_FILE_RANK}, filename) AS rank
      FROM read_parquet('{pattern}', union_by_name = true, filename = true)
      WHERE sample_id IS NOT NULL
    ) WHERE rank = 1
    """


def _sql_path(path: Path) -> str:
    return path.as_posix().replace("'", "''")


def _originals_sql(data_root: Path) -> str:
    """{sha256 -> [{original, where, converted}, ...]} from every store index directly under the
    data root (the `store` stage's `data/store/index.parquet`); an empty relation when there is none."""
    indexes = sorted(data_root.glob(f"*/{INDEX_NAME}"))
    if not indexes:
        return ("SELECT NULL::VARCHAR AS sha256, "
                "NULL::STRUCT(original VARCHAR, \"where\" VARCHAR, converted VARCHAR)[] AS originals WHERE false")
    files = ", ".join(f"'{_sql_path(path)}'" for path in indexes)
    return f"""
    SELECT sha256, list({{'original': original, 'where': "where", 'converted': converted}}
                ORDER BY original) AS originals
    FROM read_parquet([{files}], union_by_name = true)
    GROUP BY sha256
    """


def trace(sample_id: str, data_root: str | Path = "data") -> list[dict[str, Any]]:
    """The chain from `sample_id` back to its roots, one dict per node with its depth.

    `originals` lists, for a node whose image is in the image store, the files it was
    imported from (`original`: the path as the store index names it, relative to the
    repository; `where`: the data-file record that named it; `converted`: what the store
    did to it, None when the bytes were kept), sorted by path; empty otherwise.

    Raises KeyError when no parquet file under `data_root` holds `sample_id`.
    """
    import duckdb

    data_root = Path(data_root)
    if not any(data_root.glob("**/*.parquet")):
        raise FileNotFoundError(f"{data_root}: no parquet files to trace lineage in (run `dvc repro` first)")
    connection = duckdb.connect()
    connection.execute(f"CREATE TEMP VIEW nodes AS {_nodes_sql(data_root)}")
    connection.execute(f"CREATE TEMP VIEW originals AS {_originals_sql(data_root)}")
    cursor = connection.execute(
        """
        WITH RECURSIVE edges AS (
          SELECT sample_id AS child, unnest(parent_ids) AS parent FROM nodes
        ),
        chain(sample_id, depth, via, path) AS (
          SELECT ?::VARCHAR, 0, NULL::VARCHAR, [?::VARCHAR]
          UNION ALL
          SELECT e.parent, c.depth + 1, c.sample_id, list_append(c.path, e.parent)
          FROM chain c JOIN edges e ON e.child = c.sample_id
          WHERE NOT list_contains(c.path, e.parent)
        )
        SELECT c.depth, c.via, c.sample_id AS node, n.*,
               coalesce(o.originals, []) AS originals
        FROM chain c LEFT JOIN nodes n ON n.sample_id = c.sample_id
        LEFT JOIN originals o ON o.sha256 = n.image_sha256
        ORDER BY c.depth, c.via, c.sample_id
        """,
        [sample_id, sample_id],
    )
    names = [column[0] for column in cursor.description]
    chain = [dict(zip(names, row)) for row in cursor.fetchall()]
    if not chain or chain[0]["sample_id"] is None:
        raise KeyError(f"{sample_id}: no such sample_id in any parquet file under {data_root}")
    return chain


def format_chain(chain: list[dict[str, Any]]) -> str:
    """Render a traced chain as an indented tree for the terminal."""
    lines = []
    for node in chain:
        indent = "  " * node["depth"]
        if node["sample_id"] is None:
            lines.append(f"{indent}- {node['node']}  (not found in any parquet file)")
            continue
        verdict = ""
        if node["kept"] is not None:
            verdict = "  kept" if node["kept"] else f"  rejected: {node['reject_reason']}"
        form = f", {node['format']}" if node.get("format") else ""
        head = (f"{indent}- {node['sample_id']}  [{node['origin']}, iteration {node['iteration']}, "
                f"{node['category']}{form}]{verdict}")
        lines.append(head)
        if node["question"]:
            answer = f" -> {node['answer']}" if node["answer"] else ""
            lines.append(f"{indent}    question: {node['question']}{answer}")
        if node["image"] or node["image_sha256"]:
            lines.append(f"{indent}    image: {node['image'] or '(not in the store)'}  sha256 {str(node['image_sha256'])[:12]}")
        for original in node.get("originals") or []:
            converted = f"  [converted on import: {original['converted']}]" if original["converted"] else ""
            named = f"  (named by {original['where']})" if original["where"] else ""
            lines.append(f"{indent}    from: {original['original']}{converted}{named}")
        provenance = node["provenance"] or {}
        made_by = ", ".join(f"{key}={provenance[key]}" for key in ("backend", "model", "operator", "prompt_id")
                            if provenance.get(key))
        if made_by:
            lines.append(f"{indent}    made by: {made_by}")
        if node["origin"] == "evolved":
            scores = node["scores"] or {}
            judged = f", difficulty {scores['difficulty']:g}" if scores.get("difficulty") is not None else ""
            note = f" ({provenance['judge_note']})" if provenance.get("judge_note") else ""
            lines.append(f"{indent}    evolved: round {provenance.get('round')} by {provenance.get('operator')}"
                         f"{judged}{note}")
        if node.get("noise_seed") is not None:  # a preference pair: its rejected answer's image
            lines.append(f"{indent}    rejected: {node['rejected']!r} on the image noised to "
                         f"noise t={node['noise_t']} seed {node['noise_seed']}")
        if provenance.get("source"):  # the data file (and record) it was read from: a benchmark item, a seed record
            lines.append(f"{indent}    source: {provenance['source']}")
        lines.append(f"{indent}    file: {node['filename']}")
    return "\n".join(lines)
