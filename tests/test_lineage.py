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


def test_an_evolved_sample_shows_its_rounds_back_to_the_generated_row(tmp_path, capsys):
    data = _chain(tmp_path)
    base = dict(iteration=2, origin="evolved", category="count", image="images/bb/pool.png", image_sha256="bb" * 32)
    first = sample(sample_id="evo-1", parent_ids=["gen-1"], question="How many small squares are there?", answer="1",
                   provenance={"backend": "annotations", "operator": "perception", "round": 1},
                   scores={"difficulty": 3.5}, **base)
    second = sample(sample_id="evo-2", parent_ids=["evo-1"], question="Are there more small squares than circles?",
                    answer="no", provenance={"backend": "annotations", "operator": "reasoning", "round": 2},
                    scores={"difficulty": 5.5}, **base)
    write_samples([dict(first, kept=True), dict(second, kept=True)], data / "iter=2" / "evolution.parquet")
    write_samples([dict(second, kept=True)], data / "iter=2" / "kept.parquet")
    assert cli.main(["lineage", "evo-2", "--data-root", str(data)]) == 0
    out = capsys.readouterr().out
    order = [out.index(marker) for marker in ("- evo-2", "evolved: round 2 by reasoning, difficulty 5.5",
                                               "- evo-1", "evolved: round 1 by perception, difficulty 3.5",
                                               "- gen-1", "- que-1", "- badcase-1-shapes-7")]
    assert order == sorted(order)


def _stored_chain(tmp_path, monkeypatch):
    """Photos imported into the store (one RGBA, one copied under a second name), and a query and
    a kept sample on them: the chain must end at the photo files."""
    from PIL import Image

    from mmloop.store import ImageStore

    monkeypatch.chdir(tmp_path)  # the store names originals relative to the working directory (the repo)
    photos = tmp_path / "photos"
    (photos / "pool").mkdir(parents=True)
    Image.new("RGB", (24, 16), (200, 30, 30)).save(photos / "cat.jpg")
    (photos / "pool" / "kitty.jpg").write_bytes((photos / "cat.jpg").read_bytes())  # same bytes, second name
    Image.new("RGBA", (16, 16), (0, 90, 200, 128)).save(photos / "logo.png")
    store = ImageStore(tmp_path / "data" / "store")
    cat = store.add(photos / "cat.jpg", "seed.json: images[0] (id 1): field 'file_name'")
    assert store.add(photos / "pool" / "kitty.jpg", "pool.json: images[4] (id 9): field 'file_name'") == cat
    logo = store.add(photos / "logo.png", "pool.json: images[5] (id 10): field 'file_name'")
    store.write_index()

    data = tmp_path / "data"
    badcase = sample(sample_id="badcase-1-bench-3", iteration=1, origin="badcase", category="image_topic",
                     image_sha256="cc" * 32, question="What does the image show?", answer="B",
                     provenance={"backend": "benchmark", "source": "mmbench.tsv#3"})  # its image is not stored
    query = sample(sample_id="que-1", parent_ids=[badcase["sample_id"]], iteration=2, origin="query",
                   category="image_topic", image=cat.path, image_sha256=cat.sha256)
    kept = sample(sample_id="gen-1", parent_ids=["que-1"], iteration=2, origin="generated", category="image_topic",
                  question="What animal is this?", answer="A", image=cat.path, image_sha256=cat.sha256, kept=True)
    other = sample(sample_id="gen-2", parent_ids=["que-1"], iteration=2, origin="generated", category="image_topic",
                   image=logo.path, image_sha256=logo.sha256, kept=True)
    write_samples([badcase], data / "iter=1" / "eval" / "badcases.parquet")
    write_samples([query], data / "iter=2" / "queries.parquet")
    write_samples([kept, other], data / "iter=2" / "kept.parquet")
    return data, cat, logo


def test_trace_ends_at_the_photo_files_a_stored_image_came_from(tmp_path, monkeypatch):
    data, cat, logo = _stored_chain(tmp_path, monkeypatch)
    chain = lineage.trace("gen-1", data_root=data)
    assert [node["sample_id"] for node in chain] == ["gen-1", "que-1", "badcase-1-bench-3"]
    # Both names of the same bytes, sorted by path, each with the record that named it; bytes kept.
    assert chain[0]["originals"] == chain[1]["originals"] == [
        {"original": "photos/cat.jpg", "where": "seed.json: images[0] (id 1): field 'file_name'", "converted": None},
        {"original": "photos/pool/kitty.jpg", "where": "pool.json: images[4] (id 9): field 'file_name'",
         "converted": None}]
    assert chain[2]["originals"] == []  # a benchmark image the store never saw
    # A re-encoded image is found by the sha256 of its stored bytes, and says what was converted.
    assert lineage.trace("gen-2", data_root=data)[0]["originals"] == [
        {"original": "photos/logo.png", "where": "pool.json: images[5] (id 10): field 'file_name'",
         "converted": "RGBA"}]
    # The store's own index is not mistaken for a sample file.
    with pytest.raises(KeyError):
        lineage.trace(cat.sha256, data_root=data)


def test_trace_without_a_store_lists_no_originals(tmp_path):
    data = _chain(tmp_path)
    assert all(node["originals"] == [] for node in lineage.trace("gen-1", data_root=data))


def test_cli_prints_the_photo_a_sample_came_from(tmp_path, monkeypatch, capsys):
    data, cat, _ = _stored_chain(tmp_path, monkeypatch)
    assert cli.main(["lineage", "gen-2", "--data-root", str(data)]) == 0
    out = capsys.readouterr().out
    assert "from: photos/logo.png  [converted on import: RGBA]  (named by pool.json: images[5]" in out
    # A benchmark image is not in the store: the bad case names the benchmark item instead.
    assert "    image: (not in the store)  sha256 cccccccccccc\n" in out and "source: mmbench.tsv#3" in out
    assert cli.main(["lineage", "gen-1", "--data-root", "data"]) == 0  # relative to the repository, as the stages run
    lines = capsys.readouterr().out.splitlines()
    image = lines.index(f"    image: {cat.path}  sha256 {cat.sha256[:12]}")
    assert lines[image + 1:image + 3] == [
        "    from: photos/cat.jpg  (named by seed.json: images[0] (id 1): field 'file_name')",
        "    from: photos/pool/kitty.jpg  (named by pool.json: images[4] (id 9): field 'file_name')"]
