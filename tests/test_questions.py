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
    ({"family": "comparison", "a": {"shape": "circle"}, "b": {"shape": "square"}}, "yes",
     "Are there more circles than squares?", "Yes, there are more circles than squares."),
    ({"family": "comparison", "a": {"colour": "red", "shape": "circle"}, "b": {"shape": "square"}}, "no",
     "Are there more red circles than squares?", "No, there are not more red circles than squares."),
    ({"family": "multihop", "attribute": "colour", "relation": "left of", "anchor": {"shape": "square"}}, "red",
     "What colour is the object to the left of the square?", "The object to the left of the square is red."),
    ({"family": "multihop", "attribute": "shape", "relation": "above", "anchor": {"colour": "blue", "shape": "circle"}},
     "circle", "What is the object above the blue circle?", "The object above the blue circle is a circle."),
    ({"family": "multihop", "attribute": "size", "relation": "right of",
      "anchor": {"size": "large", "colour": "red", "shape": "circle"}}, "small",
     "What size is the object to the right of the large red circle?",
     "The object to the right of the large red circle is small."),
]


@pytest.mark.parametrize("program, answer, text, sentence", WORDING, ids=[w[0]["family"] for w in WORDING])
def test_each_family_words_its_question_and_statement(program, answer, text, sentence):
    assert questions.question_text(program) == text
    assert questions.statement(program, f" {answer} ") == sentence
    assert questions.answer_program(program, scene()) == answer


def test_families_and_l2_categories_come_from_the_registry():
    # the first six keep their order: programs, seeds and benchmarks name them
    assert questions.FAMILIES == ("colour", "shape", "size", "existence", "count", "spatial", "comparison",
                                  "multihop")
    assert questions.FAMILIES == tuple(questions.FAMILY_REGISTRY)
    assert all(isinstance(family, questions.Family) and family.name == name
               for name, family in questions.FAMILY_REGISTRY.items())
    assert questions.L2_CATEGORY == {"colour": "attribute", "shape": "attribute", "size": "attribute",
                                     "existence": "instance", "count": "instance", "spatial": "relation",
                                     "comparison": "instance", "multihop": "relation"}
    # the compositional families take two steps from what is seen to the answer
    assert {name: family.reasoning_steps for name, family in questions.FAMILY_REGISTRY.items()} == {
        "colour": 1, "shape": 1, "size": 1, "existence": 1, "count": 1, "spatial": 1, "comparison": 2,
        "multihop": 2}
    # each registered family says so itself rather than inheriting Family's default
    assert all(any("reasoning_steps" in vars(cls) for cls in type(family).__mro__ if cls is not questions.Family)
               for family in questions.FAMILY_REGISTRY.values())
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
                                         r"\(known: colour, shape, size, existence, count, spatial, comparison, "
                                         r"multihop\)"):
        call()


def test_unknown_family_to_make_and_bad_selectors_are_clear_errors():
    with pytest.raises(ValueError, match=r"unknown question family 'hue' \(known: colour, shape"):
        questions.make_question("hue", scene(), random.Random(0))
    with pytest.raises(ValueError, match=r"'query' must be an object selector"):
        questions.answer_program({"family": "count"}, scene())
    with pytest.raises(ValueError, match=r"unknown selector field\(s\) \['hue'\]"):
        questions.answer_program({"family": "count", "query": {"hue": "red"}}, scene())


# ---------------------------------------------------------------- real COCO category names

# inflect's plurals; names already plural keep their form and take plural agreement.
PLURALS = [("person", "people"), ("mouse", "mice"), ("sheep", "sheep"), ("knife", "knives"), ("bus", "buses"),
           ("glass", "glasses"), ("wine glass", "wine glasses"), ("dining table", "dining tables"),
           ("hair drier", "hair driers"), ("teddy bear", "teddy bears"), ("sports ball", "sports balls"),
           ("skis", "skis"), ("scissors", "scissors"), ("glasses", "glasses"),
           ("circle", "circles"), ("square", "squares"), ("triangle", "triangles"), ("object", "objects")]
ALREADY_PLURAL = {"skis", "scissors", "glasses"}


@pytest.mark.parametrize("name, many", PLURALS, ids=[p[0] for p in PLURALS])
def test_plurals_of_category_names(name, many):
    assert questions.plural(name) == many
    assert questions.is_plural_name(name) == (name in ALREADY_PLURAL)
    count = {"family": "count", "query": {"shape": name}}
    assert questions.question_text(count) == f"How many {many} are there?"
    assert questions.statement(count, "0") == f"There are no {many} in the image."
    assert questions.statement(count, "3") == f"There are 3 {many} in the image."


@pytest.mark.parametrize("name, is_there, yes, no, one", [
    ("person", "Is there a person in the image?", "Yes, there is a person in the image.",
     "No, there is no person in the image.", "There is 1 person in the image."),
    ("umbrella", "Is there an umbrella in the image?", "Yes, there is an umbrella in the image.",
     "No, there is no umbrella in the image.", "There is 1 umbrella in the image."),
    ("unicorn", "Is there a unicorn in the image?", "Yes, there is a unicorn in the image.",
     "No, there is no unicorn in the image.", "There is 1 unicorn in the image."),
    ("sheep", "Is there a sheep in the image?", "Yes, there is a sheep in the image.",
     "No, there is no sheep in the image.", "There is 1 sheep in the image."),
    ("hair drier", "Is there a hair drier in the image?", "Yes, there is a hair drier in the image.",
     "No, there is no hair drier in the image.", "There is 1 hair drier in the image."),
    ("skis", "Are there skis in the image?", "Yes, there are skis in the image.",
     "No, there are no skis in the image.", "There is 1 pair of skis in the image."),
    ("scissors", "Are there scissors in the image?", "Yes, there are scissors in the image.",
     "No, there are no scissors in the image.", "There is 1 pair of scissors in the image."),
])
def test_existence_and_count_agree_with_the_category_name(name, is_there, yes, no, one):
    query = {"family": "existence", "query": {"shape": name}}
    assert questions.question_text(query) == is_there
    assert (questions.statement(query, "yes"), questions.statement(query, "no")) == (yes, no)
    assert questions.statement({"family": "count", "query": {"shape": name}}, "1") == one


def test_the_worlds_words_come_out_as_before():
    assert [questions.article(f"{size} {colour} circle") for size in questions.SIZES
            for colour in ("orange", "yellow")] == ["a small orange circle", "a small yellow circle",
                                                   "a large orange circle", "a large yellow circle"]
    assert questions.article("orange square") == "an orange square"
    assert questions.article("object") == "an object"
    assert questions.count_phrase({"colour": "red"}, 2) == "2 red objects"
    assert questions.count_phrase({"shape": "triangle"}, 1) == "1 triangle"
    assert questions.statement({"family": "existence", "query": {"colour": "yellow", "shape": "triangle"}},
                               "yes") == "Yes, there is a yellow triangle in the image."


def test_plural_names_agree_in_attribute_and_spatial_questions():
    program = {"family": "spatial", "a": {"shape": "skis"}, "b": {"shape": "person"}}
    assert questions.question_text(program) == "Where are the skis relative to the person?"
    assert questions.statement(program, "left of") == "The skis are to the left of the person."
    colour = {"family": "colour", "target": {"shape": "scissors"}}
    assert questions.question_text(colour) == "What colour are the scissors?"
    assert questions.statement(colour, "red") == "The scissors are red."


def test_vocabulary_texts_hold_the_words_of_plural_names():
    names = ["person", "skis", "knife", "scissors"]
    words = set(" ".join(questions.vocabulary_texts(shapes=names)).replace("?", " ").replace(".", " ").split())
    assert {"people", "skis", "knives", "scissors", "pair", "of", "Are", "there"} <= words
    # the world's vocabulary texts gain nothing
    assert "pair" not in " ".join(questions.vocabulary_texts())


def box(id, name, bbox, crowd=False):
    return SceneObject(id, name, tuple(float(v) for v in bbox), crowd=crowd)


def sheep_and_a_crowd():
    """18 sheep in a row and a crowd region over the flock, plus a dog and a crowd of people."""
    flock = [box(i, "sheep", (i * 20, 100, 10, 10)) for i in range(18)]
    return [*flock, box(50, "sheep", (0, 90, 400, 30), crowd=True), box(51, "dog", (200, 300, 40, 40)),
            box(52, "person", (0, 400, 300, 80), crowd=True)]


def test_crowd_regions_are_never_counted():
    objects = sheep_and_a_crowd()
    assert questions.answer_program({"family": "count", "query": {"shape": "sheep"}}, objects) == "18"
    assert questions.answer_program({"family": "count", "query": {}}, objects) == "19"
    assert questions.statement({"family": "count", "query": {"shape": "sheep"}}, "18") == \
        "There are 18 sheep in the image."
    rng = random.Random(0)
    asked = {}
    for _ in range(200):
        made = questions.make_question("count", objects, rng, shapes=["person", "dog", "sheep", "cat", "cow"])
        assert made.answer == questions.answer_program(made.program, objects)
        asked[made.question] = made.answer
    assert asked["How many sheep are there?"] == "18"
    assert asked["How many objects are there?"] == "19"
    # a category seen only as a crowd is neither counted as 0 nor as 1
    assert "How many people are there?" not in asked


def test_crowd_regions_answer_existence_but_are_never_a_referent():
    objects = sheep_and_a_crowd()
    assert questions.answer_program({"family": "existence", "query": {"shape": "person"}}, objects) == "yes"
    # the crowd of people is one box named by one selector, yet it is no object to relate
    assert questions.answer_program({"family": "spatial", "a": {"shape": "person"}, "b": {"shape": "dog"}},
                                    objects) is None
    rng = random.Random(1)
    for _ in range(100):
        made = questions.make_question("spatial", objects, rng, shapes=["person", "dog", "sheep"])
        # the dog is the only referent a selector names alone (the sheep are many), so no question
        assert made is None
    coloured = [SceneObject(1, "circle", (0, 0, 10, 10), "red"), SceneObject(2, "square", (40, 0, 10, 10), "blue"),
                SceneObject(3, "triangle", (0, 40, 30, 30), "green", crowd=True)]
    assert questions.answer_program({"family": "colour", "target": {"shape": "triangle"}}, coloured) is None
    rng = random.Random(2)
    for family in ("colour", "shape", "spatial"):
        for _ in range(30):
            made = questions.make_question(family, coloured, rng)
            assert "triangle" not in made.question and "green" not in made.question, made.question
    # a crowd of the same category makes "the circle" ambiguous
    crowded = [*coloured, SceneObject(4, "circle", (60, 60, 30, 30), "red", crowd=True)]
    assert questions.answer_program({"family": "spatial", "a": {"shape": "circle"}, "b": {"shape": "square"}},
                                    crowded) is None


COCO_40 = ["person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
           "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
           "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
           "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
           "tennis racket", "bottle"]


def coco_scene(rng):
    """1-3 categories of COCO_40, 1-4 boxes each, side by side."""
    names = rng.sample(COCO_40, rng.randint(1, 3))
    objects = []
    for name in names:
        for _ in range(rng.randint(1, 4)):
            objects.append(box(len(objects), name, (len(objects) * 30, 0, 20, 20)))
    return objects


def test_count_zero_is_a_minority_answer_on_a_large_vocabulary():
    rng = random.Random(3)
    answers, absent_asked = [], set()
    for _ in range(600):
        objects = coco_scene(rng)
        made = questions.make_question("count", objects, rng, shapes=COCO_40)
        assert made.answer == questions.answer_program(made.program, objects)
        answers.append(made.answer)
        shape = made.program["query"].get("shape")
        assert shape is None or shape in COCO_40
        if made.answer == "0":
            absent_asked.add(shape)
    zeros = answers.count("0") / len(answers)
    # at most as many absent categories as present ones, plus "all objects": under half are "0"
    assert 0.1 < zeros < 0.5, zeros
    assert len(absent_asked) > 20  # absent categories come from the whole vocabulary


def test_existence_negatives_come_from_the_vocabulary_near_the_scene():
    rng = random.Random(4)
    negatives = set()
    for _ in range(300):
        objects = [box(1, "knife", (0, 0, 10, 10)), box(2, "person", (50, 0, 10, 10))]
        made = questions.make_question("existence", objects, rng, shapes=COCO_40 + ["fork", "knife", "spoon"])
        if made.answer == "no":
            negatives.add(made.program["query"]["shape"])
    # within two places of "person" (first) or "knife" (second to last) in the dataset's list
    assert negatives == {"bicycle", "car", "bottle", "fork", "spoon"}


def test_no_spatial_relation_between_overlapping_boxes():
    # the cup's centre is straight above the saucer's: without the overlap rule, "cup above saucer"
    cup_on_saucer = [box(1, "cup", (50, 32, 20, 10)), box(2, "saucer", (30, 30, 60, 60))]
    assert questions.make_question("spatial", cup_on_saucer, random.Random(0)) is None
    for a, b in (("cup", "saucer"), ("saucer", "cup")):
        assert questions.answer_program({"family": "spatial", "a": {"shape": a}, "b": {"shape": b}},
                                        cup_on_saucer) is None
    # partly overlapping, with a dominant axis: still no relation
    overlapping = [box(1, "cup", (0, 0, 40, 10)), box(2, "saucer", (30, 0, 40, 10))]
    assert questions.answer_program({"family": "spatial", "a": {"shape": "cup"}, "b": {"shape": "saucer"}},
                                    overlapping) is None
    # touching is fine
    touching = [box(1, "cup", (0, 0, 30, 10)), box(2, "saucer", (30, 0, 30, 10))]
    assert questions.answer_program({"family": "spatial", "a": {"shape": "cup"}, "b": {"shape": "saucer"}},
                                    touching) == "left of"
    made = questions.make_question("spatial", touching, random.Random(0))
    assert made is not None and made.answer in ("left of", "right of")


def test_question_key_is_direction_insensitive_for_spatial_questions():
    objects = [box(1, "cup", (0, 0, 10, 10)), box(2, "knife", (40, 0, 10, 10))]
    rng = random.Random(5)
    made = [questions.make_question("spatial", objects, rng) for _ in range(30)]
    assert len({m.question for m in made}) == 2  # both directions are made ...
    assert len({questions.question_key(m) for m in made}) == 1  # ... and share one key
    others = [questions.make_question(family, scene(), random.Random(6)) for family in questions.FAMILIES]
    assert [questions.question_key(m) for m in others[:5]] == [m.question for m in others[:5]]
    # different pairs keep different keys
    three = [*objects, box(3, "fork", (80, 0, 10, 10))]
    keys = {questions.question_key(questions.make_question("spatial", three, random.Random(seed)))
            for seed in range(40)}
    assert len(keys) == 3


# ---------------------------------------------------------------- the embedded world is unchanged

def world_questions(family, single_shape):
    """(question, options, answer, statement) of `family` on 80 world scenes, one seeded rng each:
    the scenes with one shape only (`single_shape`) or with several."""
    import hashlib

    from mmloop.world import scenes as world

    config = world.WorldConfig(splits={"seed": 80, "pool": 1, "bench": 1})
    made = []
    for index, scene in enumerate(world.generate(config, seed=11)["seed"]):
        if (len({obj["shape"] for obj in scene}) == 1) != single_shape:
            continue
        objects = [SceneObject(id=i, shape=o["shape"], bbox=world.bbox(o, config), colour=o["colour"], size=o["size"],
                               row=o["row"], col=o["col"]) for i, o in enumerate(scene)]
        question = questions.make_question(family, objects, random.Random(f"{family}-{index}"))
        made.append(None if question is None else
                    [question.question, list(question.options), question.answer, question.statement])
    return made, hashlib.sha256(json.dumps(made).encode()).hexdigest()[:16]


# Digests of the questions the module made before crowds, plurals from inflect, disjoint boxes
# and bounded count questions: world objects never overlap and are never crowds, and the world's
# words pluralise as before, so only count questions about single-shape scenes may change.
WORLD_DIGESTS = {
    ("colour", False): "65cf4d61a230dab7", ("colour", True): "38ac76c6a82b06ce",
    ("shape", False): "cab4d955ea34f35a", ("shape", True): "5601148c94231598",
    ("size", False): "9ce75e8836f9dcc2", ("size", True): "23dd7ce87fdfb8ca",
    ("existence", False): "47dc144927c5a09d", ("existence", True): "5db4e6e487b0e76a",
    ("spatial", False): "cc245fbbcab6d552", ("spatial", True): "2689c59bae77a499",
    ("count", False): "32e3cc06ba0be928",
}


@pytest.mark.parametrize("family, single_shape", list(WORLD_DIGESTS), ids=[f"{f}-{'one' if s else 'several'}-shape"
                                                                         for f, s in WORLD_DIGESTS])
def test_world_questions_for_a_fixed_seed_are_unchanged(family, single_shape):
    made, digest = world_questions(family, single_shape)
    assert sum(m is not None for m in made) >= 5
    assert digest == WORLD_DIGESTS[family, single_shape]


def test_world_count_questions_on_a_single_shape_scene_ask_one_absent_shape():
    # two red circles: the choices are all objects, circles, red objects and one absent shape
    # (square or triangle, drawn each time), where both absent shapes were choices before (0.4 of "0")
    objects = [SceneObject(1, "circle", (0, 0, 8, 8), "red", "small", 0, 0),
               SceneObject(2, "circle", (16, 0, 8, 8), "red", "small", 0, 1)]
    rng = random.Random(7)
    made = [questions.make_question("count", objects, rng) for _ in range(1000)]
    shares = {text: sum(m.question == text for m in made) / len(made) for text in {m.question for m in made}}
    assert set(shares) == {"How many objects are there?", "How many circles are there?",
                           "How many red objects are there?", "How many squares are there?",
                           "How many triangles are there?"}
    zeros = shares["How many squares are there?"] + shares["How many triangles are there?"]
    assert 0.2 < zeros < 0.3, shares


# ---------------------------------------------------------------- compositional families

def test_comparison_counts_both_sides_and_compares():
    objects = scene()  # a large red circle, a small orange square, a small blue circle
    def ask(a, b):
        return questions.answer_program({"family": "comparison", "a": a, "b": b}, objects)

    assert ask({"shape": "circle"}, {"shape": "square"}) == "yes"  # 2 > 1
    assert ask({"shape": "square"}, {"shape": "circle"}) == "no"  # 1 < 2
    assert ask({"colour": "red"}, {"colour": "blue"}) == "no"  # a tie is not "more"
    assert ask({"size": "small"}, {"size": "large"}) == "yes"
    assert ask({"shape": "square"}, {"shape": "triangle"}) == "yes"  # 1 > 0
    assert ask({"colour": "green"}, {"shape": "triangle"}) == "no"  # 0, 0: asked never, still answered


def test_comparison_with_a_crowd_on_either_side_has_no_answer():
    objects = [*sheep_and_a_crowd(), box(60, "cup", (300, 0, 10, 10)), box(61, "cup", (330, 0, 10, 10))]
    def ask(a, b):
        return questions.answer_program({"family": "comparison", "a": {"shape": a}, "b": {"shape": b}}, objects)

    assert ask("cup", "dog") == "yes"
    assert ask("dog", "cup") == "no"
    # a crowd region is an unknown number of sheep or people
    assert ask("sheep", "dog") is None and ask("dog", "sheep") is None
    assert ask("person", "cup") is None and ask("cup", "person") is None
    rng = random.Random(8)
    for _ in range(200):
        made = questions.make_question("comparison", objects, rng, shapes=["person", "dog", "sheep", "cup", "cat"])
        assert made is not None and made.answer == questions.answer_program(made.program, objects)
        assert {made.program["a"]["shape"], made.program["b"]["shape"]} <= {"dog", "cup", "cat"}


def test_comparison_reads_with_real_category_names():
    program = {"family": "comparison", "a": {"shape": "person"}, "b": {"shape": "cup"}}
    assert questions.question_text(program) == "Are there more people than cups?"
    assert questions.statement(program, "yes") == "Yes, there are more people than cups."
    assert questions.statement(program, "no") == "No, there are not more people than cups."
    skis = {"family": "comparison", "a": {"shape": "skis"}, "b": {"shape": "knife"}}
    assert questions.question_text(skis) == "Are there more skis than knives?"
    assert questions.statement(skis, "no") == "No, there are not more skis than knives."
    objects = [box(1, "skis", (0, 0, 10, 10)), box(2, "skis", (20, 0, 10, 10)), box(3, "knife", (40, 0, 10, 10))]
    assert questions.answer_program(skis, objects) == "yes"  # two pairs of skis, one knife


def test_comparison_questions_are_informative_balanced_and_mostly_about_things_on_the_image():
    from mmloop.world import scenes as world

    config = world.WorldConfig(splits={"seed": 300, "pool": 1, "bench": 1})
    rng = random.Random(9)
    answers, both_on_image = [], 0
    for scene in world.generate(config, seed=12)["seed"]:
        objects = [SceneObject(id=i, shape=o["shape"], bbox=world.bbox(o, config), colour=o["colour"],
                               size=o["size"], row=o["row"], col=o["col"]) for i, o in enumerate(scene)]
        made = questions.make_question("comparison", objects, rng)
        assert made is not None and made.options in (("yes", "no"), ("no", "yes"))
        assert made.answer == questions.answer_program(made.program, objects)
        a, b = made.program["a"], made.program["b"]
        # two different things, neither a part of the other, at least one of them on the image
        assert not a.items() <= b.items() and not b.items() <= a.items()
        on_image = [bool(questions.matching(objects, side)) for side in (a, b)]
        assert any(on_image)
        both_on_image += all(on_image)
        answers.append(made.answer)
    assert 0.4 < answers.count("yes") / len(answers) < 0.6
    assert both_on_image / len(answers) > 0.7


def skis_person_cup():
    """COCO-like: skis, a person and a cup in a row; a crowd of people below; a bench above the person."""
    return [box(1, "skis", (0, 100, 20, 20)), box(2, "person", (50, 100, 20, 40)), box(3, "cup", (100, 110, 10, 10)),
            box(4, "bench", (45, 0, 30, 20)), box(5, "person", (0, 300, 200, 60), crowd=True)]


def test_multihop_on_real_category_names():
    objects = skis_person_cup()
    program = {"family": "multihop", "attribute": "shape", "relation": "left of", "anchor": {"shape": "cup"}}
    # the person, and further along the skis, lie to the cup's left: which one?
    assert questions.answer_program(program, objects) is None
    program["anchor"] = {"shape": "bench"}
    program["relation"] = "below"
    # below the bench: the person, and the crowd of people further down: a crowd makes it ambiguous
    assert questions.answer_program(program, objects) is None
    program = {"family": "multihop", "attribute": "shape", "relation": "above", "anchor": {"shape": "cup"}}
    assert questions.answer_program(program, objects) == "bench"  # up and a little left: more up than left
    assert questions.answer_program({**program, "relation": "right of"}, objects) is None  # nothing there
    program = {"family": "multihop", "attribute": "shape", "relation": "right of", "anchor": {"shape": "skis"}}
    assert questions.answer_program(program, objects) is None  # the person and the cup
    lone = [box(1, "skis", (0, 100, 20, 20)), box(2, "person", (50, 100, 20, 40)), box(4, "umbrella", (45, 0, 30, 20))]
    left = {"family": "multihop", "attribute": "shape", "relation": "left of", "anchor": {"shape": "person"}}
    assert questions.answer_program(left, lone) == "skis"
    assert questions.question_text(left) == "What is the object to the left of the person?"
    assert questions.statement(left, "skis") == "The object to the left of the person is a pair of skis."
    right = {"family": "multihop", "attribute": "shape", "relation": "right of", "anchor": {"shape": "skis"}}
    assert questions.answer_program(right, lone) == "person"
    assert questions.question_text(right) == "What is the object to the right of the skis?"
    assert questions.statement(right, "person") == "The object to the right of the skis is a person."
    above = {"family": "multihop", "attribute": "shape", "relation": "above", "anchor": {"shape": "person"}}
    assert questions.statement(above, questions.answer_program(above, lone)) == \
        "The object above the person is an umbrella."
    # real COCO has no colour: no colour question has an answer, and none is made
    assert questions.answer_program({**left, "attribute": "colour"}, lone) is None
    rng = random.Random(10)
    for _ in range(100):
        made = questions.make_question("multihop", lone, rng, shapes=COCO_40)
        assert made.program["attribute"] == "shape" and made.answer in made.options
        assert made.answer == questions.answer_program(made.program, lone)
        assert set(made.options) <= set(COCO_40) and len(made.options) == 3


def test_multihop_refuses_every_ambiguous_reading():
    def at(id, shape, colour, col, row, size="small"):
        return SceneObject(id, shape, (col * 16 + 4.0, row * 16 + 4.0, 8.0, 8.0), colour, size, row, col)

    def ask(objects, where, anchor, attribute="colour"):
        program = {"family": "multihop", "attribute": attribute, "relation": where, "anchor": anchor}
        return questions.answer_program(program, objects)

    anchor = at(1, "circle", "red", 2, 1)
    one = [anchor, at(2, "square", "blue", 0, 1)]
    assert ask(one, "left of", {"shape": "circle"}) == "blue"
    assert ask(one, "left of", {"shape": "circle"}, "shape") == "square"
    assert ask(one, "left of", {"shape": "circle"}, "size") == "small"
    assert ask(one, "right of", {"shape": "circle"}) is None  # nothing there
    # two objects to the left: which one?
    assert ask([*one, at(3, "triangle", "green", 1, 1)], "left of", {"shape": "circle"}) is None
    # a near-diagonal object (3 cells across, 2 down) is not "left of" by `relation`, yet leans left
    assert ask([at(1, "circle", "red", 3, 0), at(2, "square", "blue", 0, 0), at(3, "triangle", "green", 0, 2)],
               "left of", {"shape": "circle"}) is None
    # a plain diagonal neighbour leans neither way and leaves the answer alone
    assert ask([*one, at(3, "triangle", "green", 1, 2)], "left of", {"shape": "circle"}) == "blue"
    # an anchor the selector does not name alone
    assert ask([*one, at(3, "circle", "green", 3, 3)], "left of", {"shape": "circle"}) is None
    assert ask([*one, at(3, "circle", "green", 3, 3)], "left of", {"colour": "red", "shape": "circle"}) == "blue"
    # an anchor that is a crowd region, or a crowd region where the answer would be
    crowd = SceneObject(4, "triangle", (0.0, 12.0, 12.0, 12.0), "green", crowd=True)
    assert ask([*one, crowd], "left of", {"shape": "circle"}) is None
    assert ask([anchor, crowd], "left of", {"shape": "circle"}) is None
    assert ask([anchor, crowd, at(2, "square", "blue", 3, 1)], "right of", {"shape": "triangle"}) is None


def test_multihop_programs_are_checked():
    program = {"family": "multihop", "attribute": "hue", "relation": "left of", "anchor": {"shape": "circle"}}
    with pytest.raises(ValueError, match=r"'attribute' must be one of colour, shape, size, got 'hue'"):
        questions.answer_program(program, scene())
    with pytest.raises(ValueError, match=r"'relation' must be one of left of, right of, above, below, got 'near'"):
        questions.question_text({**program, "attribute": "colour", "relation": "near"})
    with pytest.raises(ValueError, match=r"'anchor' must be an object selector"):
        questions.answer_program({"family": "multihop", "attribute": "size", "relation": "above"}, scene())


def test_multihop_questions_on_the_world_reexecute_and_draw_options_from_the_vocabulary():
    from mmloop.world import scenes as world

    config = world.WorldConfig(splits={"seed": 200, "pool": 1, "bench": 1})
    rng = random.Random(13)
    asked = {"colour": 0, "shape": 0, "size": 0}
    for scene_objects in world.generate(config, seed=13)["seed"]:
        objects = [SceneObject(id=i, shape=o["shape"], bbox=world.bbox(o, config), colour=o["colour"],
                               size=o["size"], row=o["row"], col=o["col"]) for i, o in enumerate(scene_objects)]
        made = questions.make_question("multihop", objects, rng)
        if made is None:
            continue
        attribute = made.program["attribute"]
        asked[attribute] += 1
        assert made.answer == questions.answer_program(made.program, objects)
        assert made.statement == questions.statement(made.program, made.answer)
        vocabulary = {"colour": questions.COLOURS, "shape": questions.SHAPES, "size": questions.SIZES}[attribute]
        assert made.answer in made.options and set(made.options) <= set(vocabulary)
        assert len(made.options) == {"colour": 4, "shape": 3, "size": 2}[attribute]
    assert sum(asked.values()) > 100 and min(asked.values()) > 25, asked
