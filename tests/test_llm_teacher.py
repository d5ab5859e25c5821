"""The `openai` teacher (mmloop.teachers.openai_chat) end to end, against the local fault-injecting server."""

import base64
import hashlib
import io
import uuid
from pathlib import Path

import pytest
from PIL import Image

from mmloop.config import OpenAIConfig
from mmloop.io import write_json
from mmloop.schema import read_samples, write_samples
from mmloop.teachers import llm, openai_chat
from mmloop.teachers.journal import Journal
from openai_server import FaultConfig, OpenAIServer

REPO = Path(__file__).resolve().parents[1]
CATEGORIES = ["colour", "shape", "size", "existence", "count", "spatial"]
COLOURS = ["red", "green", "blue", "yellow", "purple", "orange"]


def _world(root: Path, n_images: int):
    """Tiny images in the content-addressed store, their objects, bad cases and queries."""
    images, objects_by_image = [], {}
    for i in range(n_images):
        colour = COLOURS[i % len(COLOURS)]
        image = Image.new("RGB", (128, 96), "white")
        image.paste(colour, (8 + i % 50, 8, 40 + i % 50, 40))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        data = buffer.getvalue()
        sha = hashlib.sha256(data).hexdigest()
        rel = f"images/{sha[:2]}/{sha}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
        images.append((rel, sha))
        objects_by_image[sha] = [
            {"id": 1, "category": "square", "bbox": [8 + i % 50, 8, 32, 32],
             "attributes": {"colour": colour, "size": "large", "row": 0, "col": 0}},
            {"id": 2, "category": "circle", "bbox": [80, 60, 10, 10],
             "attributes": {"colour": "blue", "size": "small", "row": 2, "col": 3}}]
    badcases = [{"sample_id": f"badcase-0-shapes-{i}", "question": f"What colour is object {i}?",
                 "options": ["red", "blue", "green", "yellow"], "answer": "red", "category": CATEGORIES[i % 6],
                 "conversations": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "B"}]}
                for i in range(12)]
    queries = [{"sample_id": f"que-{i:04d}", "parent_ids": [f"badcase-0-shapes-{i % 12}",
                                                            f"badcase-0-shapes-{(i + 1) % 12}",
                                                            f"badcase-0-shapes-{(i + 2) % 12}"],
                "image": images[i][0], "image_sha256": images[i][1], "category": CATEGORIES[i % 6],
                "origin": "query", "iteration": 1} for i in range(n_images)]
    return queries, badcases, objects_by_image


FORMAT_MIX = {"mcq": 0.6, "short": 0.2, "conversation": 0.2}


def _config(url, journal, **overrides):
    base = {"model": "gpt-test", "base_url": url, "api_key_env": "MMLOOP_TEST_KEY", "temperature": 0.7,
            "max_tokens": 512, "concurrency": 8, "timeout": 0.5, "backoff_base": 0.01, "backoff_max": 0.2,
            "max_attempts": 10, "image_mode": "image", "image_max_side": 64, "prompt": str(REPO / "prompts/generate.j2"),
            "journal": str(journal), "prices": {"gpt-test": {"input": 2.5, "output": 10.0}}}
    base.update(overrides)
    return OpenAIConfig(**base)


def _teacher(config, badcases, objects, data_root, format_mix=FORMAT_MIX):
    return openai_chat.OpenAITeacher(config, format_mix, answer_format="letter", objects_by_image=objects,
                                     badcases=badcases, data_root=data_root, iteration=1)


@pytest.fixture
def server():
    srv = OpenAIServer(FaultConfig(fault_rate=0.2, timeout_sleep=1.0, skip_rate=0.1, messy_rate=0.3,
                                   broken_rate=0.05, seed=11)).start()
    yield srv
    srv.stop()


@pytest.fixture
def secret(monkeypatch):
    key = f"sk-test-{uuid.uuid4().hex}"
    monkeypatch.setenv("MMLOOP_TEST_KEY", key)
    return key


def test_generate_end_to_end_with_faults_then_a_free_rerun(server, secret, tmp_path, capfd):
    root = tmp_path / "repo"
    data = root / "data"
    queries, badcases, objects = _world(data, 60)
    config = _config(server.url, root / ".mmloop/journal/openai.sqlite")
    records, stats = _teacher(config, badcases, objects, data).run(queries)

    # Nothing lost: every query produced generated rows or an explicit rejected row; nothing duplicated.
    by_query = {q["sample_id"]: [r for r in records if r["parent_ids"] == [q["sample_id"]]] for q in queries}
    assert all(by_query.values())
    assert len({r["sample_id"] for r in records}) == len(records)
    assert max(server.counters.successes.values()) == 1 and len(server.counters.successes) == 60
    assert sum(server.counters.faults.values()) >= 5
    assert stats["outcomes"]["request_failed"] == 0
    assert stats["outcomes"]["skipped"] >= 1 and stats["outcomes"]["parse_failed"] >= 1
    assert {"json_syntax", "single_object"} <= set(stats["repairs"])  # messy replies were repaired, not rejected
    generated = [r for r in records if r["kept"] is None]
    rejected = [r for r in records if r["kept"] is False]
    assert {r["reject_reason"] for r in rejected} <= {"skipped", "parse_failed", "request_failed"}
    assert {r["format"] for r in generated} == {"mcq", "short", "conversation"}
    for row in records:
        prov = row["provenance"]
        assert prov["backend"] == "openai" and prov["model"] == "gpt-test" and prov["prompt_id"] == "generate@v1"
        assert len(prov["prompt_sha256"]) == 64 and prov["request_hash"]
    mcq = next(r for r in generated if r["format"] == "mcq")
    assert mcq["answer"] in mcq["options"]
    assert mcq["conversations"][1]["content"] == "ABCDEFGH"[mcq["options"].index(mcq["answer"])]
    assert mcq["conversations"][0]["content"].endswith("Answer with the option's letter from the given choices directly.")
    assert stats["usage"]["cost_usd"] > 0 and stats["usage"]["sent"] == sum(server.counters.attempts.values())

    from mmloop.validation import validate
    validate(generated, "samples", source="generated.parquet", iteration=1, data_root=str(data))

    # The stage's outputs and metrics, written the way the generate stage will.
    write_samples(records, data / "iter=1/generated.parquet")
    write_json(root / "metrics/generate/iter=1.json", stats)

    # A DVC rerun with unchanged inputs costs nothing and gives the same rows.
    attempts = sum(server.counters.attempts.values())
    again, stats2 = _teacher(config, badcases, objects, data).run(queries)
    assert sum(server.counters.attempts.values()) == attempts
    assert stats2["usage"]["sent"] == 0 and stats2["usage"]["journal_hits"] == 60
    assert [r["sample_id"] for r in again] == [r["sample_id"] for r in records]

    # The key is in no file (outputs, metrics, journal), and not in the logs.
    out, err = capfd.readouterr()
    assert secret not in out + err
    for path in root.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
    assert read_samples(data / "iter=1/generated.parquet")[0]["provenance"]["backend"] == "openai"


def test_text_only_mode_sends_annotations_not_pixels(secret, tmp_path):
    srv = OpenAIServer().start()
    try:
        queries, badcases, objects = _world(tmp_path, 6)
        config = _config(srv.url, tmp_path / "j.sqlite", image_mode="caption")
        records, stats = _teacher(config, badcases, objects, tmp_path, {"mcq": 1.0}).run(queries)
        texts = list(srv.counters.texts.values())
    finally:
        srv.stop()
    assert stats["outcomes"] == {"generated": 6, "skipped": 0, "parse_failed": 0, "request_failed": 0, "duplicate": 0}
    # The server built its answers from the annotations it was sent, so the colour questions are right.
    colour = next(r for r in records if r["category"] == "colour")
    assert colour["answer"] == objects[colour["image_sha256"]][0]["attributes"]["colour"]
    assert all("<objects>" in text or "Skip" in text for text in texts)


def test_images_travel_as_resized_data_urls(tmp_path):
    queries, _, _ = _world(tmp_path, 1)
    url = llm.image_data_url(tmp_path / queries[0]["image"], max_side=64)
    assert url.startswith("data:image/png;base64,")
    image = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert max(image.size) == 64 and image.size == (64, 48)
    original = llm.image_data_url(tmp_path / queries[0]["image"], max_side=1024)
    assert base64.b64decode(original.split(",", 1)[1]) == (tmp_path / queries[0]["image"]).read_bytes()


def test_request_failures_become_rejected_rows_and_proposed_prompts_are_refused(secret, tmp_path):
    srv = OpenAIServer(FaultConfig(failing_rate=0.5)).start()
    try:
        queries, badcases, objects = _world(tmp_path, 8)
        config = _config(srv.url, tmp_path / "j.sqlite", max_attempts=2)
        records, stats = _teacher(config, badcases, objects, tmp_path).run(queries)
    finally:
        srv.stop()
    failed = [r for r in records if r["reject_reason"] == "request_failed"]
    assert 0 < len(failed) < 8 and stats["outcomes"]["request_failed"] == len(failed)
    assert stats["rates"]["request_failed"] == len(failed) / 8
    assert all(r["kept"] is False and r["conversations"][1]["content"] == "" for r in failed)
    with Journal(tmp_path / "j.sqlite") as journal:
        errors = [e.error for e in journal.entries() if e.status == "failed"]
    assert len(errors) == len(failed) and all(e.startswith("gave up after 2 attempts") for e in errors)

    proposed = tmp_path / "generate.v2.j2"
    proposed.write_text((REPO / "prompts/generate.j2").read_text().replace("version: 1", "version: 2\nstatus: proposed"))
    with pytest.raises(ValueError, match="not yet reviewed"):
        _teacher(_config(srv.url, tmp_path / "j.sqlite", prompt=str(proposed)), badcases, objects, tmp_path)


def test_format_mix_draw_is_deterministic_and_follows_weights():
    draws = [openai_chat.choose_data_type(f"q{i}", {"mcq": 0.75, "short": 0.25, "caption": 1.0}) for i in range(400)]
    assert draws == [openai_chat.choose_data_type(f"q{i}", {"mcq": 0.75, "short": 0.25}) for i in range(400)]
    assert 0.65 < draws.count("mcq") / 400 < 0.85 and set(draws) == {"mcq", "short"}
