"""Interactive Prompt Optimization: the review page, per-version rates, and proposing a new version."""

import shutil
import uuid

import pytest

from mmloop.schema import write_samples
from mmloop.teachers import ipo, prompts
from openai_server import FaultConfig, OpenAIServer
from test_llm_teacher import REPO, _config, _teacher, _world


@pytest.fixture
def iteration_data(tmp_path, monkeypatch):
    monkeypatch.setenv("MMLOOP_TEST_KEY", f"sk-test-{uuid.uuid4().hex}")
    srv = OpenAIServer(FaultConfig(skip_rate=0.2, broken_rate=0.2, seed=5)).start()
    data = tmp_path / "data"
    queries, badcases, objects = _world(data, 30)
    prompt_dir = tmp_path / "prompts"
    prompt_dir.mkdir()
    shutil.copy(REPO / "prompts/generate.j2", prompt_dir / "generate.j2")
    shutil.copy(REPO / "prompts/propose.j2", prompt_dir / "propose.j2")
    config = _config(srv.url, tmp_path / "journal.sqlite", prompt=str(prompt_dir / "generate.j2"))
    records, stats = _teacher(config, badcases, objects, data).run(queries)
    # Elimination's verdict on the generated rows: keep all but the first two.
    generated = [r for r in records if r["kept"] is None]
    kept = [dict(r, kept=True) for r in generated[2:]]
    rejected = [dict(r, kept=False, reject_reason="clip_low") for r in generated[:2]]
    write_samples(records, data / "iter=1/generated.parquet")
    write_samples(kept, data / "iter=1/kept.parquet")
    write_samples(rejected + [r for r in records if r["kept"] is False], data / "iter=1/rejected.parquet")
    yield data, config, prompt_dir, stats, srv
    srv.stop()


def test_review_page_groups_by_outcome_and_shows_images(iteration_data, tmp_path):
    data, _, _, stats, _ = iteration_data
    metrics = ipo.review(1, tmp_path / "review.html", data_root=data)
    page = (tmp_path / "review.html").read_text()
    for heading in ("kept —", "rejected: clip_low —", "skipped —", "parse_failed —", "generate@v1"):
        assert heading in page
    assert page.count("data:image/png;base64,") >= 10
    assert "parse: no JSON" in page  # the reason a reply failed, recomputed from its raw text
    [(version, rates)] = metrics.items()
    assert version.startswith("generate@v1 (")
    assert rates["requests"] == 30
    assert rates["skip_rate"] == pytest.approx(stats["rates"]["skipped"])
    assert rates["parse_failure_rate"] == pytest.approx(stats["rates"]["parse_failed"])
    assert rates["keep_rate"] == pytest.approx(rates["outcomes"]["kept"] / 30)
    assert 0 < rates["keep_rate"] < 1


def test_propose_writes_a_new_version_for_review_and_never_uses_it(iteration_data):
    data, config, prompt_dir, _, srv = iteration_data
    path = ipo.propose(1, prompt_dir / "generate.j2", config, data_root=data,
                       propose_template=prompt_dir / "propose.j2")
    assert path == prompt_dir / "generate.v2.j2"
    proposed = prompts.load_template(path)
    original = prompts.load_template(prompt_dir / "generate.j2")
    assert proposed.version == 2 and proposed.meta["status"] == "proposed"
    assert proposed.meta["parent"] == f"generate@v1 {original.file_sha256}"
    assert proposed.output_schema == original.output_schema
    assert "0. Never ask about an object" in proposed.body and proposed.body != original.body
    asked = [text for text in srv.counters.texts.values() if "</current_template>" in text]
    assert asked  # the teacher saw the current template and the failures
    assert config.prompt.endswith("generate.j2")  # params still point at the reviewed version
    # Proposing again makes the next version; an existing version is never overwritten.
    before = path.read_text()
    second = ipo.propose(1, prompt_dir / "generate.j2", config, data_root=data,
                         propose_template=prompt_dir / "propose.j2")
    assert second == prompt_dir / "generate.v3.j2" and path.read_text() == before


def test_failure_cases_spread_over_outcomes():
    rows = [{"sample_id": f"s{i}", "kept": False, "reject_reason": reason, "category": "count",
             "conversations": [{"role": "user", "content": "Data type: mcq"}, {"role": "assistant", "content": "nope"}]}
            for i, reason in enumerate(["skipped"] * 10 + ["parse_failed"] * 10 + ["clip_low"] * 10)]
    cases = ipo.failure_cases(rows, limit=6)
    assert sorted(c["outcome"] for c in cases) == ["parse_failed"] * 2 + ["rejected: clip_low"] * 2 + ["skipped"] * 2
    assert next(c for c in cases if c["outcome"] == "parse_failed")["reason"].startswith("parse:")


def test_prompts_review_command_writes_the_page_and_prints_rates(iteration_data, tmp_path, capsys):
    from mmloop import cli

    data, *_ = iteration_data
    out = tmp_path / "page.html"
    assert cli.main(["prompts", "review", "1", "--out", str(out), "--data-root", str(data)]) == 0
    printed = capsys.readouterr().out
    assert "generate@v1" in printed and "keep_rate" in printed and out.is_file()
    assert cli.main(["prompts", "review", "7", "--out", str(out), "--data-root", str(data)]) == 1


def test_prompts_propose_command_reads_the_teacher_from_params(iteration_data, tmp_path, monkeypatch, capsys):
    import yaml

    from mmloop import cli

    data, config, prompt_dir, _, _ = iteration_data
    monkeypatch.chdir(REPO)  # the proposal request's own template, prompts/propose.j2
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"generate": {"backend": "openai",
                                                   "openai": config.model_dump(mode="json", exclude_none=True)}}))
    assert cli.main(["prompts", "propose", "1", "--params", str(params), "--data-root", str(data)]) == 0
    assert (prompt_dir / "generate.v2.j2").is_file() and "status: proposed" in capsys.readouterr().out
    params.write_text(yaml.safe_dump({"generate": {"backend": "annotations"}}))
    assert cli.main(["prompts", "propose", "1", "--params", str(params), "--data-root", str(data)]) == 1
    assert "generate.openai is not set" in capsys.readouterr().err
