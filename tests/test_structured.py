"""mmloop.teachers.structured: repairs of common JSON breakage, validation, and the Skip way out."""

import json

import pytest

from mmloop.teachers import structured

ITEM = {"question": "What colour is the circle?", "options": ["red", "blue", "green"], "answer": "red",
        "rationale": "It is red."}


@pytest.mark.parametrize("text, repairs", [
    ("```json\n" + json.dumps([ITEM]) + "\n```", ["json_syntax"]),  # a code fence
    (json.dumps([ITEM])[:-2] + "},\n]", ["json_syntax"]),  # a trailing comma
    ("Here you go: " + json.dumps([ITEM]) + " Hope it helps.", ["json_syntax"]),  # prose around it
    (json.dumps([ITEM]).replace('"red",', '\u201cred\u201d,', 1), ["json_syntax"]),  # typographic quotes
    ("Sure! " + json.dumps(ITEM), ["json_syntax", "single_object"]),
    (json.dumps({"items": [ITEM]}), ["wrapped_list"]),
    (json.dumps(ITEM), ["single_object"]),
    (json.dumps([ITEM]), []),
])
def test_common_breakage_is_repaired_and_reported(text, repairs):
    result = structured.parse_reply(text, "mcq")
    assert result.status == structured.OK, result.reason
    assert result.items == [ITEM] and result.repairs == repairs


def test_trailing_comma_inside_a_string_is_left_alone():
    item = dict(ITEM, rationale="red, ]")
    value, repairs = structured.repair_json(json.dumps([item]) + ",")
    assert value == [item]


@pytest.mark.parametrize("text", ["Skip", "skip.", '"Skip"', "```\nSkip\n```", '{"skip": true}', '["Skip"]'])
def test_skip_is_honoured(text):
    assert structured.parse_reply(text, "mcq").status == structured.SKIP


def test_a_question_mentioning_skip_is_not_a_skip():
    result = structured.parse_reply(json.dumps([dict(ITEM, question="Should we skip the red circle?")]), "mcq")
    assert result.status == structured.OK


@pytest.mark.parametrize("text, reason", [
    ("", "empty reply"),
    ("I cannot help with that.", "parse: no JSON"),
    ('[{"question": "What colour', "schema: item: 'options' is a required property"),  # truncated: repaired, incomplete
    (json.dumps([dict(ITEM, answer="purple")]), "not one of the options"),
    (json.dumps([dict(ITEM, options=["red", "Red"])]), "not unique"),
    (json.dumps([{"question": "Q?", "answer": "red"}]), "schema: item: 'options' is a required property"),
    (json.dumps([dict(ITEM, options="red")]), "schema: options"),
])
def test_invalid_replies_are_rejected_with_a_reason(text, reason):
    result = structured.parse_reply(text, "mcq")
    assert result.status == structured.INVALID
    assert reason in result.reason and result.raw == text


def test_letter_answers_map_to_option_text_and_bad_items_are_kept_apart():
    good = dict(ITEM, answer="B")
    bad = dict(ITEM, answer="Z")
    result = structured.parse_reply(json.dumps([good, bad]), "mcq")
    assert result.status == structured.OK
    assert result.items[0]["answer"] == "blue"
    assert len(result.rejected) == 1 and "not one of the options" in result.rejected[0][1]


def test_short_and_conversation_types():
    assert structured.parse_reply('[{"question": "Q?", "answer": "The circle is red."}]', "short").status == "ok"
    turns = [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}]
    assert structured.parse_reply(json.dumps([{"conversations": turns}]), "conversation").status == "ok"
    # A single conversation object, not wrapped in a list, is repaired too.
    assert structured.parse_reply(json.dumps({"conversations": turns}), "conversation").items[0]["conversations"] == turns
    wrong_order = [{"conversations": turns[::-1]}]
    result = structured.parse_reply(json.dumps(wrong_order), "conversation")
    assert result.status == "invalid" and "alternate" in result.reason


def test_template_schema_overrides_the_default():
    schema = dict(structured.DEFAULT_SCHEMAS["mcq"], required=["question", "options", "answer", "rationale"])
    no_rationale = {k: v for k, v in ITEM.items() if k != "rationale"}
    assert structured.parse_reply(json.dumps([no_rationale]), "mcq").status == "ok"
    assert structured.parse_reply(json.dumps([no_rationale]), "mcq", schema).status == "invalid"
