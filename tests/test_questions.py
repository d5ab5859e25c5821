import json
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


# Every family's wording, pinned: the seed, the benchmark and the verifier all read these texts.
WORDING = [
    ({"family": "colour", "target": {"size": "large", "shape": "circle"}}, "red",
     "What colour is the large circle?", "The large circle is red."),
    ({"family": "shape", "target": {"colour": "orange"}}, "square",
     "What shape is the orange object?", "The orange object is a square."),
    ({"family": "size", "target": {"colour": "blue", "shape": "circle"}}, "small",
     "What size is the blue circle?", "The blue circle is small."),
    ({"family": "existence", "query": {"colour": "orange", "shape": "circle"}}, "no",
     "Is there an orange circle in the image?", "No, there is no orange circle in the image."),
    ({"family": "count", "query": {"colour": "green"}}, "0",
     "How many green objects are there?", "There are no green objects in the image."),
    ({"family": "spatial", "a": {"shape": "square"}, "b": {"colour": "red"}}, "right of",
     "Where is the square relative to the red object?", "The square is to the right of the red object."),
]


@pytest.mark.parametrize("program, answer, text, sentence", WORDING, ids=[w[0]["family"] for w in WORDING])
def test_each_family_words_its_question_and_statement(program, answer, text, sentence):
    assert questions.question_text(program) == text
    assert questions.statement(program, f" {answer} ") == sentence
    assert questions.answer_program(program, scene()) == answer


def test_families_and_l2_categories_come_from_the_registry():
    assert questions.FAMILIES == ("colour", "shape", "size", "existence", "count", "spatial")
    assert questions.FAMILIES == tuple(questions.FAMILY_REGISTRY)
    assert all(isinstance(family, questions.Family) and family.name == name
               for name, family in questions.FAMILY_REGISTRY.items())
    assert questions.L2_CATEGORY == {"colour": "attribute", "shape": "attribute", "size": "attribute",
                                     "existence": "instance", "count": "instance", "spatial": "relation"}
    assert questions.l2_category("ocr") == "ocr"
    with pytest.raises(ValueError, match="'colour' is registered twice"):
        questions.register(type(questions.get_family("colour")))


def test_a_new_family_is_one_class(monkeypatch):
    class Rows(questions.Family):
        """How many rows hold an object: one class is all a family needs."""
        name, l2_category = "rows", "instance"

        def answer(self, program, objects):
            return str(len({obj.row for obj in objects}))

        def text(self, program):
            return "How many rows hold an object?"

        def statement(self, program, answer):
            return f"{answer} rows hold an object."

        def make(self, objects, rng, vocab):
            options = questions._options(self.answer({}, objects), ["1", "2", "3", "4"], 4, rng)
            return self.question({"family": self.name}, options, objects)

        def examples(self, vocab):
            return [({"family": self.name}, "2")]

    monkeypatch.setitem(questions.FAMILY_REGISTRY, "rows", Rows())
    made = questions.make_question("rows", scene(), random.Random(0))
    assert (made.answer, made.question, made.statement) == ("2", "How many rows hold an object?",
                                                            "2 rows hold an object.")
    assert made.l2_category == "instance"
    assert questions.answer_program(made.program, scene()) == "2"
    assert "How many rows hold an object? 2 rows hold an object." in questions.vocabulary_texts()


@pytest.mark.parametrize("call", [
    lambda: questions.answer_program({"family": "hue", "target": {}}, scene()),
    lambda: questions.question_text({"family": "hue"}),
    lambda: questions.statement({"family": "hue"}, "red"),
])
def test_unknown_family_in_a_program_names_the_program_and_the_known_families(call):
    with pytest.raises(ValueError, match=r"question program \{'family': 'hue'.*unknown question family 'hue' "
                                         r"\(known: colour, shape, size, existence, count, spatial\)"):
        call()


def test_unknown_family_to_make_and_bad_selectors_are_clear_errors():
    with pytest.raises(ValueError, match=r"unknown question family 'hue' \(known: colour, shape"):
        questions.make_question("hue", scene(), random.Random(0))
    with pytest.raises(ValueError, match=r"'query' must be an object selector"):
        questions.answer_program({"family": "count"}, scene())
    with pytest.raises(ValueError, match=r"unknown selector field\(s\) \['hue'\]"):
        questions.answer_program({"family": "count", "query": {"hue": "red"}}, scene())


def coco(**changes):
    instances = {"images": [{"id": 1, "sha256": "aa"}, {"id": 2}],
                 "categories": [{"id": 7, "name": "circle"}],
                 "annotations": [{"id": 5, "image_id": 1, "category_id": 7, "bbox": [0, 0, 4, 4],
                                  "attributes": {"colour": "red", "size": "small", "row": 0, "col": 0}}]}
    instances.update(changes)
    return instances


def test_objects_by_image_keys_by_sha256_else_id():
    objects = questions.objects_by_image(coco())
    assert objects == {"aa": [questions.SceneObject(5, "circle", (0.0, 0.0, 4.0, 4.0), "red", "small", 0, 0)],
                       "2": []}
    assert [questions.image_key(image) for image in coco()["images"]] == ["aa", "2"]


@pytest.mark.parametrize("changes, message", [
    ({"categories": None}, r"inst\.json: COCO instances has no 'categories' list"),
    ({"images": [{"sha256": "aa"}]}, r"inst\.json: images\[0\] has no 'id' field"),
    ({"annotations": [{"id": 5, "image_id": 1, "bbox": [0, 0, 4, 4]}]},
     r"inst\.json: annotations\[0\] \(id 5\) has no 'category_id' field"),
    ({"annotations": [{"id": 5, "image_id": 9, "category_id": 7, "bbox": [0, 0, 4, 4]}]},
     r"annotations\[0\] \(id 5\): image_id 9 is not in 'images'"),
    ({"annotations": [{"id": 5, "image_id": 1, "category_id": 7, "bbox": [0, 0, 4]}]},
     r"annotations\[0\] \(id 5\): 'bbox' must be \[x, y, w, h\]"),
])
def test_objects_by_image_errors_name_file_record_and_field(changes, message):
    with pytest.raises(ValueError, match=message):
        questions.objects_by_image(coco(**changes), source="inst.json")


def test_read_objects_merges_files_and_names_the_bad_one(tmp_path):
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    first.write_text(json.dumps(coco()))
    second.write_text(json.dumps(coco(images=[{"id": 1, "sha256": "bb"}])))
    objects = questions.read_objects([first, second])
    assert set(objects) == {"aa", "2", "bb"} and objects["aa"] == objects["bb"]
    assert questions.read_objects(str(first)) == questions.objects_by_image(coco())
    second.write_text(json.dumps(coco(categories=[])))
    with pytest.raises(ValueError, match=r"b\.json: annotations\[0\] \(id 5\): category_id 7 is not in"):
        questions.read_objects([first, second])
