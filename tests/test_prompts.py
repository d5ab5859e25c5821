"""mmloop.teachers.prompts: front matter, rendering, hashes, versions; and the shipped generation template."""

from pathlib import Path

import pytest

from mmloop.teachers import prompts

REPO = Path(__file__).resolve().parents[1]
TEXT = "---\nid: demo\nversion: 2\ntask: generate\noutput_schema: {mcq: {type: object}}\nnote: hi\n---\nAsk about {{ category }}.\n"


def test_front_matter_and_render(tmp_path):
    path = tmp_path / "demo.j2"
    path.write_text(TEXT)
    template = prompts.load_template(path)
    assert (template.id, template.version, template.task, template.name) == ("demo", 2, "generate", "demo@v2")
    assert template.output_schema == {"mcq": {"type": "object"}} and template.meta == {"note": "hi"}
    first, again, other = (template.render(category=c) for c in ("colour", "colour", "count"))
    assert first.text == "Ask about colour.\n"
    assert first.sha256 == again.sha256 != other.sha256
    path.write_text(TEXT.replace("Ask", "Please ask"))
    assert prompts.load_template(path).file_sha256 != template.file_sha256


def test_errors_name_the_file_and_field(tmp_path):
    path = tmp_path / "broken.j2"
    path.write_text("no front matter")
    with pytest.raises(ValueError, match="broken.j2.*front matter"):
        prompts.load_template(path)
    path.write_text("---\ntask: generate\n---\nbody")
    with pytest.raises(ValueError, match="broken.j2: front matter field 'id'"):
        prompts.load_template(path)
    path.write_text("---\nid: x\ntask: t\n---\n{% if %}")
    with pytest.raises(ValueError, match="does not compile"):
        prompts.load_template(path)
    path.write_text(TEXT)
    with pytest.raises(Exception, match="category"):
        prompts.load_template(path).render()  # StrictUndefined: a missing variable is an error


def test_versions(tmp_path):
    path = tmp_path / "generate.j2"
    path.write_text(TEXT)
    assert prompts.versioned_path(path, 3) == tmp_path / "generate.v3.j2"
    assert prompts.next_version(path) == 3
    (tmp_path / "generate.v5.j2").write_text(TEXT)
    assert prompts.next_version(path) == 6
    round_trip = prompts.parse_template(prompts.with_front_matter({"id": "a", "task": "b", "version": 4}, "x\n"))
    assert (round_trip.id, round_trip.version, round_trip.body) == ("a", 4, "x\n")


def test_generation_template_follows_the_mllm_dataengine_structure():
    template = prompts.load_template(REPO / "prompts/generate.j2")
    assert set(template.output_schema) == {"mcq", "short", "conversation"}
    text = template.render(
        category="count", definition=template.meta["definitions"]["count"], data_type="mcq",
        data_type_definition=template.meta["data_types"]["mcq"], output_schema=template.output_schema["mcq"],
        n_items=1, image_mode="annotations", objects=[{"shape": "circle", "colour": "red"}], width=64, height=64,
        badcases=[{"question": "How many circles?", "options": ["1", "2"], "answer": "2", "wrong": "A (1)"},
                  {"question": "How many squares?", "options": ["0", "1"], "answer": "1", "wrong": "A (0)"}]).text
    sections = ["You are", "Goal:", "Image information:", "Rules:\n1.", "Worked example", "Question type: count",
                "Definition:", "Bad case 1:", "Bad case 2:", "Skip"]
    positions = [text.index(section) for section in sections]
    assert positions == sorted(positions)
    assert '<objects>\n[{"colour": "red", "shape": "circle"}]\n</objects>' in text
    assert "{{" not in text and "{%" not in text
    assert prompts.load_template(REPO / "prompts/propose.j2").task == "propose"
