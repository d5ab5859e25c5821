import random

import pytest

from mmloop import questions
from mmloop.questions import SceneObject


def scene():
    return [SceneObject(1, "circle", (0, 0, 14, 14), "red", "large", 0, 0),
            SceneObject(2, "square", (36, 4, 8, 8), "orange", "small", 0, 2),
            SceneObject(3, "circle", (4, 36, 8, 8), "blue", "small", 2, 0)]


@pytest.mark.parametrize("family", questions.FAMILIES)
def test_every_family_answers_its_own_program(family):
    rng = random.Random(0)
    for _ in range(20):
        made = questions.make_question(family, scene(), rng)
        assert made is not None and made.answer in made.options
        assert questions.answer_program(made.program, scene()) == made.answer
        assert made.statement == questions.statement(made.program, made.answer)


def test_spatial_and_count_answers_by_hand():
    objects = scene()
    assert questions.answer_program({"family": "spatial", "a": {"colour": "red"}, "b": {"shape": "square"}},
                                    objects) == "left of"
    assert questions.answer_program({"family": "spatial", "a": {"colour": "blue"}, "b": {"colour": "red"}},
                                    objects) == "below"
    # diagonal pairs have no dominant axis, so no answer
    assert questions.answer_program({"family": "spatial", "a": {"colour": "blue"}, "b": {"shape": "square"}},
                                    objects) is None
    assert questions.answer_program({"family": "count", "query": {"shape": "circle"}}, objects) == "2"
    assert questions.answer_program({"family": "colour", "target": {"shape": "circle"}}, objects) is None


def test_articles_and_sentences():
    assert questions.article("orange square") == "an orange square"
    assert questions.statement({"family": "existence", "query": {"colour": "orange", "shape": "square"}},
                               "yes") == "Yes, there is an orange square in the image."
    assert questions.statement({"family": "count", "query": {"shape": "circle"}}, "1") == \
        "There is 1 circle in the image."


def test_mcq_replies_follow_the_answer_format():
    made = questions.make_question("colour", scene(), random.Random(1))
    letter_turns = questions.turns(made, "mcq")
    option_turns = questions.turns(made, "mcq", "option")
    assert letter_turns[1]["content"] == made.answer_letter
    assert option_turns[1]["content"] == made.answer
    assert letter_turns[0]["content"].endswith(questions.MCQ_SUFFIX)
    assert option_turns[0]["content"].endswith(questions.MCQ_SUFFIXES["option"])
    with pytest.raises(ValueError, match="answer_format"):
        questions.mcq_reply(made.options, made.answer, "number")


def test_vocabulary_covers_every_word_the_families_use():
    words = set(" ".join(questions.vocabulary_texts()).replace(".", " ").replace("?", " ").replace(",", " ").split())
    rng = random.Random(2)
    for family in questions.FAMILIES:
        for _ in range(10):
            made = questions.make_question(family, scene(), rng)
            text = f"{made.question} {made.statement} {' '.join(made.options)}"
            missing = set(text.replace(".", " ").replace("?", " ").replace(",", " ").split()) - words
            assert not missing, (family, missing)
