import pytest

from mmloop import cli, lineage
from mmloop.schema import sample, write_samples


def _chain(tmp_path):
    """seed image -> bad case -> query -> generated (kept), spread over iteration folders."""
    data = tmp_path / "data"
    badcase = sample(sample_id="badcase-1-shapes-7", iteration=1, origin="badcase", category="count",
                     image="images/aa/bench.png", image_sha256="aa" * 32, question="How many circles?",
                     answer="2")
    other = sample(sample_id="badcase-1-shapes-9", iteration=1, origin="badcase", category="count")
    query = sample(sample_id="que-1", parent_ids=[badcase["sample_id"], other["sample_id"]], iteration=2,
                   origin="query", category="count", image="images/bb/pool.png", image_sha256="bb" * 32,
                   provenance={"operator": "neighbour"})
    generated = sample(sample_id="gen-1", parent_ids=["que-1"], iteration=2, origin="generated", category="count",
                       question="How many squares are there?", answer="3", image="images/bb/pool.png",
                       image_sha256="bb" * 32, provenance={"backend": "annotations"})
    kept = dict(generated, kept=True)
    write_samples([badcase, other], data / "iter=1" / "eval" / "badcases.parquet")
    write_samples([query], data / "iter=2" / "queries.parquet")
    write_samples([generated], data / "iter=2" / "generated.parquet")
    write_samples([kept], data / "iter=2" / "kept.parquet")
    write_samples([kept], data / "iter=2" / "replay_pool.parquet")
    return data


def test_trace_walks_parents_back_to_the_bad_cases(tmp_path):
    data = _chain(tmp_path)
    chain = lineage.trace("gen-1", data_root=data)
    assert [(node["depth"], node["sample_id"]) for node in chain] == [
        (0, "gen-1"), (1, "que-1"), (2, "badcase-1-shapes-7"), (2, "badcase-1-shapes-9")]
    # The kept row wins over the generated and replay copies of the same sample.
    assert chain[0]["kept"] is True and chain[0]["filename"].endswith("kept.parquet")
    assert chain[1]["image"] == "images/bb/pool.png"


def test_trace_unknown_id_names_it(tmp_path):
    data = _chain(tmp_path)
    with pytest.raises(KeyError, match="nope"):
        lineage.trace("nope", data_root=data)


def test_cli_prints_the_chain(tmp_path, capsys):
    data = _chain(tmp_path)
    assert cli.main(["lineage", "gen-1", "--data-root", str(data)]) == 0
    out = capsys.readouterr().out
    assert "badcase-1-shapes-7" in out and "images/aa/bench.png" in out and "operator=neighbour" in out
    assert cli.main(["lineage", "missing", "--data-root", str(data)]) == 1
