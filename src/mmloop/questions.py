"""Question families over scene annotations, and the programs that verify their answers.

Every question is built from objects read out of COCO instances (`objects_by_image`):
category name = shape, bbox for geometry, and, in the procedural world, attributes
colour / size / row / col. existence, count and spatial need only category + bbox, so
they work on real COCO; colour, shape and size need the attributes and are skipped
(`make_question` returns None) where they are absent.

Each question carries a `program`: a small JSON-able dict that `answer_program` re-executes
against an image's annotations. The eliminate stage uses it to verify generated answers,
and `statement(program, answer)` turns any (program, answer) into the full-sentence answer.

Object references ("the large circle") are always unambiguous: a question is only asked
about an object whose description matches exactly one object of the scene.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Mapping, Sequence
from typing import Any

from mmloop.schema import letter

FAMILIES = ("colour", "shape", "size", "existence", "count", "spatial")
# MMBench's l2-category for each family (its "category" column is the family itself).
L2_CATEGORY = {
    "colour": "attribute", "shape": "attribute", "size": "attribute",
    "existence": "instance", "count": "instance", "spatial": "relation",
}
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")
SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "large")
RELATIONS = ("left of", "right of", "above", "below")
YES_NO = ("yes", "no")
# How a multiple-choice reply names its choice. "letter" is the MMBench/VLMEvalKit convention
# (the reply is "B"), right for hub models. "option" replies with the option's text: a tiny
# model trained from scratch on a CPU learns to read the image in minutes but not the extra
# step of mapping what it sees to a letter (see the README's measurements).
ANSWER_FORMATS = ("letter", "option")
MCQ_SUFFIX = "Answer with the option's letter from the given choices directly."
MCQ_SUFFIXES = {"letter": MCQ_SUFFIX, "option": "Answer with the option's text from the given choices directly."}
CAPTION_QUESTION = "Describe the image briefly."
# A relation is asked only when one axis dominates the other by this factor (no diagonals).
DOMINANT_AXIS_RATIO = 2.0
NUMBER_WORDS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


@dataclasses.dataclass(frozen=True)
class SceneObject:
    """One annotated object. `shape` is the COCO category name; attributes may be None (real COCO)."""

    id: int
    shape: str
    bbox: tuple[float, float, float, float]
    colour: str | None = None
    size: str | None = None
    row: int | None = None
    col: int | None = None

    @property
    def centre(self) -> tuple[float, float]:
        x, y, w, h = self.bbox
        return x + w / 2.0, y + h / 2.0

    def matches(self, selector: Mapping[str, Any]) -> bool:
        return all(getattr(self, key) == value for key, value in selector.items())


@dataclasses.dataclass(frozen=True)
class Question:
    category: str
    question: str
    options: tuple[str, ...]
    answer: str
    statement: str
    program: dict[str, Any]

    @property
    def l2_category(self) -> str:
        return L2_CATEGORY.get(self.category, self.category)

    @property
    def answer_letter(self) -> str:
        return letter(self.options.index(self.answer))


# ---------------------------------------------------------------- reading annotations

def objects_by_image(coco: Mapping[str, Any], source: str = "instances") -> dict[str, list[SceneObject]]:
    """{image key: [SceneObject, ...]} from a COCO instances dict.

    The key is the image's `sha256` (so records, which carry `image_sha256`, find their
    objects); images without a sha256 (plain COCO) are keyed by `str(id)`. Every image is
    present, with an empty list when it has no annotations. Errors name `source`, the
    record and the field.
    """
    for key in ("images", "annotations", "categories"):
        if not isinstance(coco.get(key), list):
            raise ValueError(f"{source}: COCO instances has no {key!r} list")
    names: dict[Any, str] = {}
    for position, category in enumerate(coco["categories"]):
        if "id" not in category or "name" not in category:
            raise ValueError(f"{source}: categories[{position}] needs 'id' and 'name'")
        names[category["id"]] = str(category["name"])
    key_of: dict[Any, str] = {}
    result: dict[str, list[SceneObject]] = {}
    for position, image in enumerate(coco["images"]):
        if "id" not in image:
            raise ValueError(f"{source}: images[{position}] has no 'id' field")
        key = str(image.get("sha256") or image["id"])
        key_of[image["id"]] = key
        result.setdefault(key, [])
    for position, ann in enumerate(coco["annotations"]):
        where = f"{source}: annotations[{position}] (id {ann.get('id')})"
        for field in ("image_id", "category_id", "bbox"):
            if field not in ann:
                raise ValueError(f"{where} has no {field!r} field")
        if ann["image_id"] not in key_of:
            raise ValueError(f"{where}: image_id {ann['image_id']!r} is not in 'images'")
        if ann["category_id"] not in names:
            raise ValueError(f"{where}: category_id {ann['category_id']!r} is not in 'categories'")
        bbox = ann["bbox"]
        if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
            raise ValueError(f"{where}: 'bbox' must be [x, y, w, h], got {bbox!r}")
        attributes = ann.get("attributes") or {}
        result[key_of[ann["image_id"]]].append(SceneObject(
            id=int(ann.get("id", position)), shape=names[ann["category_id"]],
            bbox=tuple(float(v) for v in bbox),
            colour=attributes.get("colour"), size=attributes.get("size"),
            row=attributes.get("row"), col=attributes.get("col"),
        ))
    return result


# ---------------------------------------------------------------- describing objects

def describe(selector: Mapping[str, Any]) -> str:
    """'large red circle' / 'red object': the words of a selector, size before colour before shape."""
    words = [selector[key] for key in ("size", "colour") if selector.get(key)]
    words.append(selector.get("shape") or "object")
    return " ".join(words)


def article(phrase: str) -> str:
    """'a red circle' / 'an orange circle'."""
    return f"{'an' if phrase[:1].lower() in 'aeiou' else 'a'} {phrase}"


def plural(noun: str) -> str:
    if noun.endswith(("s", "x", "ch", "sh")):
        return noun + "es"
    if noun.endswith("y") and noun[-2:-1] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


def count_phrase(selector: Mapping[str, Any], number: int) -> str:
    """'2 red circles' / '1 circle' / 'no objects'."""
    words = [selector[key] for key in ("size", "colour") if selector.get(key)]
    noun = selector.get("shape") or "object"
    words.append(noun if number == 1 else plural(noun))
    return f"{'no' if number == 0 else number} {' '.join(words)}"


def matching(objects: Sequence[SceneObject], selector: Mapping[str, Any]) -> list[SceneObject]:
    return [obj for obj in objects if obj.matches(selector)]


def unique_selector(obj: SceneObject, objects: Sequence[SceneObject],
                    allowed: Sequence[Sequence[str]]) -> dict[str, Any] | None:
    """The first selector (a tuple of attribute names from `allowed`) naming `obj` alone."""
    for keys in allowed:
        if any(getattr(obj, key) is None for key in keys):
            continue
        selector = {key: getattr(obj, key) for key in keys}
        if len(matching(objects, selector)) == 1:
            return selector
    return None


def _selector(program: Mapping[str, Any], key: str) -> dict[str, Any]:
    selector = program.get(key)
    if not isinstance(selector, Mapping):
        raise ValueError(f"question program {program!r}: {key!r} must be an object selector")
    unknown = set(selector) - {"shape", "colour", "size", "row", "col"}
    if unknown:
        raise ValueError(f"question program {program!r}: unknown selector field(s) {sorted(unknown)}")
    return dict(selector)


# ---------------------------------------------------------------- programs

def relation(a: SceneObject, b: SceneObject) -> str | None:
    """Where `a` is relative to `b`, or None when neither axis dominates (diagonal, overlap)."""
    (ax, ay), (bx, by) = a.centre, b.centre
    dx, dy = ax - bx, ay - by
    if abs(dx) >= DOMINANT_AXIS_RATIO * abs(dy) and dx != 0:
        return "left of" if dx < 0 else "right of"
    if abs(dy) >= DOMINANT_AXIS_RATIO * abs(dx) and dy != 0:
        return "above" if dy < 0 else "below"
    return None


def answer_program(program: Mapping[str, Any], objects: Sequence[SceneObject]) -> str | None:
    """Re-execute a question program against an image's objects.

    Returns the answer text, or None when the question has no answer on these objects
    (a referent that is missing or ambiguous, an ambiguous relation).
    """
    family = program.get("family")
    if family in ("colour", "shape", "size"):
        found = matching(objects, _selector(program, "target"))
        return getattr(found[0], family) if len(found) == 1 else None
    if family == "existence":
        return "yes" if matching(objects, _selector(program, "query")) else "no"
    if family == "count":
        return str(len(matching(objects, _selector(program, "query"))))
    if family == "spatial":
        a = matching(objects, _selector(program, "a"))
        b = matching(objects, _selector(program, "b"))
        if len(a) != 1 or len(b) != 1:
            return None
        return relation(a[0], b[0])
    raise ValueError(f"question program {program!r}: unknown family {family!r} (known: {', '.join(FAMILIES)})")


def question_text(program: Mapping[str, Any]) -> str:
    family = program.get("family")
    if family == "colour":
        return f"What colour is the {describe(program['target'])}?"
    if family == "shape":
        return f"What shape is the {describe(program['target'])}?"
    if family == "size":
        return f"What size is the {describe(program['target'])}?"
    if family == "existence":
        return f"Is there {article(describe(program['query']))} in the image?"
    if family == "count":
        return f"How many {plural(describe(program['query']))} are there?"
    if family == "spatial":
        return f"Where is the {describe(program['a'])} relative to the {describe(program['b'])}?"
    raise ValueError(f"question program {program!r}: unknown family {family!r}")


def statement(program: Mapping[str, Any], answer: Any) -> str:
    """The full-sentence answer of a program for a given answer text ("The large circle is red.")."""
    family = program.get("family")
    answer = str(answer).strip()
    if family == "colour":
        return f"The {describe(program['target'])} is {answer}."
    if family == "shape":
        return f"The {describe(program['target'])} is {article(answer)}."
    if family == "size":
        return f"The {describe(program['target'])} is {answer}."
    if family == "existence":
        thing = describe(program["query"])
        if answer.lower() == "yes":
            return f"Yes, there is {article(thing)} in the image."
        return f"No, there is no {thing} in the image."
    if family == "count":
        number = int(answer)
        verb = "is" if number == 1 else "are"
        return f"There {verb} {count_phrase(program['query'], number)} in the image."
    if family == "spatial":
        where = f"to the {answer}" if answer in ("left of", "right of") else answer
        return f"The {describe(program['a'])} is {where} the {describe(program['b'])}."
    raise ValueError(f"question program {program!r}: unknown family {family!r}")


# ---------------------------------------------------------------- making questions

def _options(answer: str, candidates: Sequence[str], n: int, rng: random.Random,
             preferred: Sequence[str] = ()) -> tuple[str, ...]:
    """`n` options: the answer at a random position plus distractors, preferring `preferred`
    (values seen in the scene, the most plausible confusions) and never equal to the answer."""
    pool = [c for c in dict.fromkeys(preferred) if c != answer and c in candidates]
    rng.shuffle(pool)
    rest = [c for c in candidates if c != answer and c not in pool]
    rng.shuffle(rest)
    distractors = (pool + rest)[: n - 1]
    if len(distractors) < n - 1:
        return ()
    options = [answer, *distractors]
    rng.shuffle(options)
    return tuple(options)


def _finish(program: dict[str, Any], options: Sequence[str], objects: Sequence[SceneObject]) -> Question | None:
    answer = answer_program(program, objects)
    if answer is None or answer not in options:
        return None
    return Question(category=program["family"], question=question_text(program), options=tuple(options),
                    answer=answer, statement=statement(program, answer), program=program)


def make_question(family: str, objects: Sequence[SceneObject], rng: random.Random, *,
                  colours: Sequence[str] = COLOURS, shapes: Sequence[str] = SHAPES,
                  max_count: int = 4) -> Question | None:
    """A question of `family` about the scene, or None when that family can't be asked on it.

    `colours` / `shapes` are the vocabularies distractors come from (pass the dataset's
    category names for real COCO); `max_count` bounds the count distractors.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown question family {family!r} (known: {', '.join(FAMILIES)})")
    objects = list(objects)
    shapes = list(dict.fromkeys([*shapes, *(obj.shape for obj in objects)]))
    maker = {"colour": _colour, "shape": _shape, "size": _size, "existence": _existence,
             "count": _count, "spatial": _spatial}[family]
    return maker(objects, rng, colours=list(colours), shapes=shapes, max_count=max_count)


def _attribute_question(family: str, objects, rng, allowed, candidates, n) -> Question | None:
    described = []
    for obj in objects:
        if getattr(obj, family) is None:
            continue
        selector = unique_selector(obj, objects, allowed)
        if selector is not None:
            described.append((obj, selector))
    if not described:
        return None
    obj, selector = rng.choice(described)
    program = {"family": family, "target": selector}
    seen = [getattr(other, family) for other in objects if getattr(other, family) is not None]
    return _finish(program, _options(getattr(obj, family), candidates, n, rng, preferred=seen), objects)


def _colour(objects, rng, *, colours, **_) -> Question | None:
    return _attribute_question("colour", objects, rng, [("shape",), ("size", "shape")], colours, 4)


def _shape(objects, rng, *, shapes, **_) -> Question | None:
    return _attribute_question("shape", objects, rng, [("colour",), ("size", "colour")], shapes, 3)


def _size(objects, rng, **_) -> Question | None:
    return _attribute_question("size", objects, rng, [("colour", "shape"), ("shape",)], list(SIZES), 2)


def _existence(objects, rng, *, colours, shapes, **_) -> Question | None:
    with_colour = bool(objects) and all(obj.colour is not None for obj in objects)
    keys = ("colour", "shape") if with_colour else ("shape",)
    present = {tuple(getattr(obj, key) for key in keys) for obj in objects}
    if with_colour:
        universe = [(c, s) for c in colours for s in shapes]
    else:
        universe = [(s,) for s in shapes]
    absent = [combo for combo in universe if combo not in present]
    want_yes = rng.random() < 0.5
    if want_yes and present or not absent:
        if not present:
            return None
        query = rng.choice(sorted(present))
    else:
        # A plausible "no": an absent combination sharing a colour or shape with the scene.
        near = [combo for combo in absent if any(set(combo) & set(p) for p in present)]
        query = rng.choice(near or absent)
    program = {"family": "existence", "query": dict(zip(keys, query))}
    return _finish(program, _options("yes" if query in present else "no", YES_NO, 2, rng), objects)


def _count(objects, rng, *, colours, shapes, max_count, **_) -> Question | None:
    choices: list[dict[str, Any]] = [{}]
    choices += [{"shape": shape} for shape in shapes]
    if objects and all(obj.colour is not None for obj in objects):
        present_colours = sorted({obj.colour for obj in objects})
        choices += [{"colour": colour} for colour in present_colours]
    query = rng.choice(choices)
    answer = len(matching(objects, query))
    top = max(max_count, answer + 1, 3)
    # Distractors are the counts nearest the answer, so the options stay plausible.
    numbers = sorted(range(0, top + 1), key=lambda k: (abs(k - answer), k))
    candidates = [str(k) for k in numbers[:4]]
    program = {"family": "count", "query": query}
    return _finish(program, _options(str(answer), candidates, 4, rng), objects)


def _spatial(objects, rng, **_) -> Question | None:
    allowed = [("shape",), ("colour", "shape"), ("size", "colour", "shape")]
    pairs = []
    for a in objects:
        for b in objects:
            if a is b or relation(a, b) is None:
                continue
            sa, sb = unique_selector(a, objects, allowed), unique_selector(b, objects, allowed)
            if sa is not None and sb is not None:
                pairs.append((sa, sb, relation(a, b)))
    if not pairs:
        return None
    sa, sb, answer = rng.choice(pairs)
    program = {"family": "spatial", "a": sa, "b": sb}
    return _finish(program, _options(answer, RELATIONS, 4, rng), objects)


def vocabulary_texts(colours: Sequence[str] = COLOURS, shapes: Sequence[str] = SHAPES,
                     sizes: Sequence[str] = SIZES, max_count: int = 10, **_: Any) -> list[str]:
    """Texts holding every word a question or answer of any family can use over these
    vocabularies, so a tokenizer trained on a starved seed still knows them all."""
    words = [*colours, *shapes, *(plural(shape) for shape in shapes), *sizes, *RELATIONS, *YES_NO,
             *NUMBER_WORDS, *(str(k) for k in range(max_count + 1)), "object", "objects", "is", "are", "a", "an"]
    selector = {"size": sizes[0], "colour": colours[0], "shape": shapes[0]}
    examples = [
        ({"family": "colour", "target": selector}, colours[0]), ({"family": "shape", "target": selector}, shapes[0]),
        ({"family": "size", "target": selector}, sizes[0]), ({"family": "existence", "query": selector}, "yes"),
        ({"family": "existence", "query": selector}, "no"), ({"family": "count", "query": selector}, "2"),
        ({"family": "spatial", "a": selector, "b": selector}, "left of"),
        ({"family": "spatial", "a": selector, "b": selector}, "above"),
    ]
    texts = [" ".join(words), CAPTION_QUESTION, *MCQ_SUFFIXES.values()]
    texts += [f"{question_text(program)} {statement(program, answer)}" for program, answer in examples]
    return texts


# ---------------------------------------------------------------- prompts and turns

def check_answer_format(answer_format: str) -> str:
    if answer_format not in ANSWER_FORMATS:
        raise ValueError(f"params.yaml: answer_format must be one of {', '.join(ANSWER_FORMATS)}, "
                         f"got {answer_format!r}")
    return answer_format


def mcq_prompt(question: str, options: Sequence[str], hint: str | None = None,
               answer_format: str = "letter") -> str:
    """The MMBench/VLMEvalKit multiple-choice user turn: hint, question, lettered options, suffix."""
    lines = [f"Hint: {hint}"] if hint else []
    lines += [question, "Options:"]
    lines += [f"{letter(index)}. {option}" for index, option in enumerate(options)]
    lines.append(MCQ_SUFFIXES[check_answer_format(answer_format)])
    return "\n".join(lines)


def mcq_reply(options: Sequence[str], answer: str, answer_format: str = "letter") -> str:
    """The assistant's reply naming `answer` among `options`: its letter, or its text."""
    if check_answer_format(answer_format) == "option":
        return answer
    return letter(list(options).index(answer))


def turns(question: Question, fmt: str, answer_format: str = "letter") -> list[dict[str, str]]:
    """A (user, assistant) turn pair: "mcq" answers with the option (letter or text), "short"
    with the full-sentence statement."""
    if fmt == "mcq":
        return [{"role": "user", "content": mcq_prompt(question.question, question.options,
                                                        answer_format=answer_format)},
                {"role": "assistant", "content": mcq_reply(question.options, question.answer, answer_format)}]
    if fmt == "short":
        return [{"role": "user", "content": question.question},
                {"role": "assistant", "content": question.statement}]
    raise ValueError(f"unknown turn format {fmt!r} (expected 'mcq' or 'short')")
