"""Question families over scene annotations, and the programs that verify their answers.

Every question is built from objects read out of COCO instances (`objects_by_image`):
category name = shape, bbox for geometry, and, in the procedural world, attributes
colour / size / row / col. existence, count and spatial need only category + bbox, so
they work on real COCO; colour, shape and size need the attributes and are skipped
(`make_question` returns None) where they are absent.

Each question carries a `program`: a small JSON-able dict that `answer_program` re-executes
against an image's annotations. The eliminate stage uses it to verify generated answers,
and `statement(program, answer)` turns any (program, answer) into the full-sentence answer.

A family is one class (`Family`): its name and MMBench l2-category, how it answers a program,
words it as a question and as a full-sentence answer, and makes a question about a scene.
`FAMILY_REGISTRY` holds one instance of each, in the order families are listed everywhere;
adding a family is adding one registered class.

Object references ("the large circle") are always unambiguous: a question is only asked
about an object whose description matches exactly one object of the scene.
"""

from __future__ import annotations

import abc
import dataclasses
import os
import random
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

from mmloop.config import ANSWER_FORMATS
from mmloop.schema import letter

COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")
SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "large")
LEFT_OF, RIGHT_OF, ABOVE, BELOW = RELATIONS = ("left of", "right of", "above", "below")
YES, NO = YES_NO = ("yes", "no")
# How a multiple-choice reply names its choice. "letter" is the MMBench/VLMEvalKit convention
# (the reply is "B"), right for hub models. "option" replies with the option's text: a tiny
# model trained from scratch on a CPU learns to read the image in minutes but not the extra
# step of mapping what it sees to a letter (see the README's measurements).
MCQ_SUFFIX = "Answer with the option's letter from the given choices directly."
MCQ_SUFFIXES = {"letter": MCQ_SUFFIX, "option": "Answer with the option's text from the given choices directly."}
CAPTION_QUESTION = "Describe the image briefly."
# A relation is asked only when one axis dominates the other by this factor (no diagonals).
DOMINANT_AXIS_RATIO = 2.0
NUMBER_WORDS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
# The attributes a selector may name an object by.
SELECTOR_FIELDS = ("shape", "colour", "size", "row", "col")


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
        return l2_category(self.category)

    @property
    def answer_letter(self) -> str:
        return letter(self.options.index(self.answer))


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    """The words a family draws distractors from: colours, shapes (category names on real
    COCO), sizes, and the largest count offered as an option (a larger true count is still offered)."""

    colours: Sequence[str] = COLOURS
    shapes: Sequence[str] = SHAPES
    sizes: Sequence[str] = SIZES
    max_count: int = 4

    def example_selector(self) -> dict[str, str]:
        """An object named by every attribute, for example questions."""
        return {"size": self.sizes[0], "colour": self.colours[0], "shape": self.shapes[0]}


# ---------------------------------------------------------------- reading annotations

def objects_by_image(coco: Mapping[str, Any], source: str = "instances") -> dict[str, list[SceneObject]]:
    """{image key: [SceneObject, ...]} from a COCO instances dict: the one reader of COCO instances.

    The key is the image's `sha256` (so records, which carry `image_sha256`, find their
    objects); images without a sha256 (plain COCO) are keyed by `str(id)`. Every image is
    present, with an empty list when it has no annotations. Errors name `source`, the
    record and the field.
    """
    for key in ("images", "annotations", "categories"):
        if not isinstance(coco.get(key), list):
            raise ValueError(f"{source}: COCO instances has no {key!r} list")
    names = _category_names(coco["categories"], source)
    key_of = _image_keys(coco["images"], source)
    result: dict[str, list[SceneObject]] = {key: [] for key in key_of.values()}
    for position, annotation in enumerate(coco["annotations"]):
        where = f"{source}: annotations[{position}] (id {annotation.get('id')})"
        for field in ("image_id", "category_id", "bbox"):
            if field not in annotation:
                raise ValueError(f"{where} has no {field!r} field")
        if annotation["image_id"] not in key_of:
            raise ValueError(f"{where}: image_id {annotation['image_id']!r} is not in 'images'")
        if annotation["category_id"] not in names:
            raise ValueError(f"{where}: category_id {annotation['category_id']!r} is not in 'categories'")
        result[key_of[annotation["image_id"]]].append(
            _scene_object(annotation, names[annotation["category_id"]], position, where))
    return result


def read_objects(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> dict[str, list[SceneObject]]:
    """`objects_by_image` of one or more COCO instances files, merged (a later file wins for
    an image key two files share). Errors name the file."""
    from mmloop.io import read_json

    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    objects: dict[str, list[SceneObject]] = {}
    for path in paths:
        objects.update(objects_by_image(read_json(path), source=str(path)))
    return objects


def _category_names(categories: Sequence[Mapping[str, Any]], source: str) -> dict[Any, str]:
    names: dict[Any, str] = {}
    for position, category in enumerate(categories):
        if "id" not in category or "name" not in category:
            raise ValueError(f"{source}: categories[{position}] needs 'id' and 'name'")
        names[category["id"]] = str(category["name"])
    return names


def image_key(image: Mapping[str, Any]) -> str:
    """How `objects_by_image` keys a COCO image: its sha256 or, without one, its id as text."""
    return str(image.get("sha256") or image["id"])


def _image_keys(images: Sequence[Mapping[str, Any]], source: str) -> dict[Any, str]:
    key_of: dict[Any, str] = {}
    for position, image in enumerate(images):
        if "id" not in image:
            raise ValueError(f"{source}: images[{position}] has no 'id' field")
        key_of[image["id"]] = image_key(image)
    return key_of


def _scene_object(annotation: Mapping[str, Any], shape: str, position: int, where: str) -> SceneObject:
    bbox = annotation["bbox"]
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        raise ValueError(f"{where}: 'bbox' must be [x, y, w, h], got {bbox!r}")
    attributes = annotation.get("attributes") or {}
    return SceneObject(id=int(annotation.get("id", position)), shape=shape, bbox=tuple(float(v) for v in bbox),
                       colour=attributes.get("colour"), size=attributes.get("size"),
                       row=attributes.get("row"), col=attributes.get("col"))


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


def relation(a: SceneObject, b: SceneObject) -> str | None:
    """Where `a` is relative to `b`, or None when neither axis dominates (diagonal, overlap)."""
    (ax, ay), (bx, by) = a.centre, b.centre
    dx, dy = ax - bx, ay - by
    if abs(dx) >= DOMINANT_AXIS_RATIO * abs(dy) and dx != 0:
        return LEFT_OF if dx < 0 else RIGHT_OF
    if abs(dy) >= DOMINANT_AXIS_RATIO * abs(dx) and dy != 0:
        return ABOVE if dy < 0 else BELOW
    return None


def _selector(program: Mapping[str, Any], key: str) -> dict[str, Any]:
    selector = program.get(key)
    if not isinstance(selector, Mapping):
        raise ValueError(f"question program {program!r}: {key!r} must be an object selector")
    unknown = set(selector) - set(SELECTOR_FIELDS)
    if unknown:
        raise ValueError(f"question program {program!r}: unknown selector field(s) {sorted(unknown)}")
    return dict(selector)


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


# ---------------------------------------------------------------- the families

class Family(abc.ABC):
    """One question family: its program's answer, question text and statement, and its maker.

    A program is `{"family": name, <selector keys>: {attribute: value, ...}}`.
    """

    name: ClassVar[str]
    l2_category: ClassVar[str]  # MMBench's l2-category (its "category" column is the family itself)

    @abc.abstractmethod
    def answer(self, program: Mapping[str, Any], objects: Sequence[SceneObject]) -> str | None:
        """The program's answer on these objects, or None when it has none there."""

    @abc.abstractmethod
    def text(self, program: Mapping[str, Any]) -> str:
        """The question the program asks."""

    @abc.abstractmethod
    def statement(self, program: Mapping[str, Any], answer: str) -> str:
        """The full-sentence answer for `answer`."""

    @abc.abstractmethod
    def make(self, objects: Sequence[SceneObject], rng: random.Random, vocab: Vocabulary) -> Question | None:
        """A question about the scene, or None when this family can't be asked on it."""

    @abc.abstractmethod
    def examples(self, vocab: Vocabulary) -> list[tuple[dict[str, Any], str]]:
        """(program, answer) pairs whose question and statement use every word this family's texts can."""

    def question(self, program: dict[str, Any], options: Sequence[str],
                 objects: Sequence[SceneObject]) -> Question | None:
        """The Question for a program and its options; None when the program's own answer is not
        among them (no options could be made, or the program has no answer here)."""
        answer = self.answer(program, objects)
        if answer is None or answer not in options:
            return None
        return Question(category=self.name, question=self.text(program), options=tuple(options),
                        answer=answer, statement=self.statement(program, answer), program=program)


FAMILY_REGISTRY: dict[str, Family] = {}


def register(cls: type[Family]) -> type[Family]:
    """Class decorator: add one instance of the family to FAMILY_REGISTRY under its name."""
    if cls.name in FAMILY_REGISTRY:
        raise ValueError(f"question family {cls.name!r} is registered twice")
    FAMILY_REGISTRY[cls.name] = cls()
    return cls


class AttributeFamily(Family):
    """Asks for one attribute (named like the family) of an object that other attributes name."""

    l2_category = "attribute"
    # How the target may be named, tried in order: the first naming it alone is used.
    selectors: ClassVar[tuple[tuple[str, ...], ...]]
    option_count: ClassVar[int]
    # The Vocabulary field listing every value the attribute can take: where distractors come from.
    vocabulary_field: ClassVar[str]

    def candidates(self, vocab: Vocabulary) -> Sequence[str]:
        return getattr(vocab, self.vocabulary_field)

    def complement(self, answer: str) -> str:
        """The answer as it follows "The <object> is"."""
        return answer

    def answer(self, program, objects):
        found = matching(objects, _selector(program, "target"))
        return getattr(found[0], self.name) if len(found) == 1 else None

    def text(self, program):
        return f"What {self.name} is the {describe(program['target'])}?"

    def statement(self, program, answer):
        return f"The {describe(program['target'])} is {self.complement(answer)}."

    def make(self, objects, rng, vocab):
        described = []
        for obj in objects:
            if getattr(obj, self.name) is None:
                continue
            selector = unique_selector(obj, objects, self.selectors)
            if selector is not None:
                described.append((obj, selector))
        if not described:
            return None
        obj, selector = rng.choice(described)
        seen = [getattr(other, self.name) for other in objects if getattr(other, self.name) is not None]
        options = _options(getattr(obj, self.name), self.candidates(vocab), self.option_count, rng, preferred=seen)
        return self.question({"family": self.name, "target": selector}, options, objects)

    def examples(self, vocab):
        return [({"family": self.name, "target": vocab.example_selector()}, self.candidates(vocab)[0])]


@register
class Colour(AttributeFamily):
    name = "colour"
    selectors = (("shape",), ("size", "shape"))
    option_count = 4
    vocabulary_field = "colours"


@register
class Shape(AttributeFamily):
    name = "shape"
    selectors = (("colour",), ("size", "colour"))
    option_count = 3
    vocabulary_field = "shapes"

    def complement(self, answer):
        return article(answer)


@register
class Size(AttributeFamily):
    name = "size"
    selectors = (("colour", "shape"), ("shape",))
    option_count = 2
    vocabulary_field = "sizes"


@register
class Existence(Family):
    name = "existence"
    l2_category = "instance"

    def answer(self, program, objects):
        return YES if matching(objects, _selector(program, "query")) else NO

    def text(self, program):
        return f"Is there {article(describe(program['query']))} in the image?"

    def statement(self, program, answer):
        thing = describe(program["query"])
        if answer.lower() == YES:
            return f"Yes, there is {article(thing)} in the image."
        return f"No, there is no {thing} in the image."

    def make(self, objects, rng, vocab):
        with_colour = bool(objects) and all(obj.colour is not None for obj in objects)
        keys = ("colour", "shape") if with_colour else ("shape",)
        present = {tuple(getattr(obj, key) for key in keys) for obj in objects}
        if with_colour:
            universe = [(c, s) for c in vocab.colours for s in vocab.shapes]
        else:
            universe = [(s,) for s in vocab.shapes]
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
        options = _options(YES if query in present else NO, YES_NO, 2, rng)
        return self.question({"family": self.name, "query": dict(zip(keys, query))}, options, objects)

    def examples(self, vocab):
        query = {"family": self.name, "query": vocab.example_selector()}
        return [(query, YES), (query, NO)]


@register
class Count(Family):
    name = "count"
    l2_category = "instance"
    # Options are the answer and the counts nearest it, at least 0..MIN_TOP.
    MIN_TOP = 3
    OPTION_COUNT = 4

    def answer(self, program, objects):
        return str(len(matching(objects, _selector(program, "query"))))

    def text(self, program):
        return f"How many {plural(describe(program['query']))} are there?"

    def statement(self, program, answer):
        number = int(answer)
        verb = "is" if number == 1 else "are"
        return f"There {verb} {count_phrase(program['query'], number)} in the image."

    def make(self, objects, rng, vocab):
        choices: list[dict[str, Any]] = [{}]
        choices += [{"shape": shape} for shape in vocab.shapes]
        if objects and all(obj.colour is not None for obj in objects):
            present_colours = sorted({obj.colour for obj in objects})
            choices += [{"colour": colour} for colour in present_colours]
        query = rng.choice(choices)
        answer = len(matching(objects, query))
        top = max(vocab.max_count, answer + 1, self.MIN_TOP)
        # Distractors are the counts nearest the answer, so the options stay plausible.
        numbers = sorted(range(0, top + 1), key=lambda k: (abs(k - answer), k))
        candidates = [str(k) for k in numbers[:self.OPTION_COUNT]]
        options = _options(str(answer), candidates, self.OPTION_COUNT, rng)
        return self.question({"family": self.name, "query": query}, options, objects)

    def examples(self, vocab):
        return [({"family": self.name, "query": vocab.example_selector()}, "2")]


@register
class Spatial(Family):
    name = "spatial"
    l2_category = "relation"
    selectors = (("shape",), ("colour", "shape"), ("size", "colour", "shape"))

    def answer(self, program, objects):
        a = matching(objects, _selector(program, "a"))
        b = matching(objects, _selector(program, "b"))
        if len(a) != 1 or len(b) != 1:
            return None
        return relation(a[0], b[0])

    def text(self, program):
        return f"Where is the {describe(program['a'])} relative to the {describe(program['b'])}?"

    def statement(self, program, answer):
        where = f"to the {answer}" if answer in (LEFT_OF, RIGHT_OF) else answer
        return f"The {describe(program['a'])} is {where} the {describe(program['b'])}."

    def make(self, objects, rng, vocab):
        pairs = []
        for a in objects:
            for b in objects:
                if a is b or relation(a, b) is None:
                    continue
                sa, sb = unique_selector(a, objects, self.selectors), unique_selector(b, objects, self.selectors)
                if sa is not None and sb is not None:
                    pairs.append((sa, sb, relation(a, b)))
        if not pairs:
            return None
        sa, sb, answer = rng.choice(pairs)
        options = _options(answer, RELATIONS, len(RELATIONS), rng)
        return self.question({"family": self.name, "a": sa, "b": sb}, options, objects)

    def examples(self, vocab):
        selector = vocab.example_selector()
        program = {"family": self.name, "a": selector, "b": selector}
        return [(program, LEFT_OF), (program, ABOVE)]


FAMILIES = tuple(FAMILY_REGISTRY)
L2_CATEGORY = {name: family.l2_category for name, family in FAMILY_REGISTRY.items()}


def l2_category(category: str) -> str:
    """MMBench's l2-category of a question category (a category that is no family is its own)."""
    family = FAMILY_REGISTRY.get(category)
    return family.l2_category if family is not None else category


def get_family(name: Any) -> Family:
    """The registered family called `name`; a ValueError naming the known families otherwise."""
    found = FAMILY_REGISTRY.get(name) if isinstance(name, str) else None
    if found is None:
        raise ValueError(f"unknown question family {name!r} (known: {', '.join(FAMILY_REGISTRY)})")
    return found


def _program_family(program: Mapping[str, Any]) -> Family:
    try:
        return get_family(program.get("family"))
    except ValueError as err:
        raise ValueError(f"question program {program!r}: {err}") from None


# ---------------------------------------------------------------- programs and questions

def answer_program(program: Mapping[str, Any], objects: Sequence[SceneObject]) -> str | None:
    """Re-execute a question program against an image's objects.

    Returns the answer text, or None when the question has no answer on these objects
    (a referent that is missing or ambiguous, an ambiguous relation).
    """
    return _program_family(program).answer(program, objects)


def question_text(program: Mapping[str, Any]) -> str:
    return _program_family(program).text(program)


def statement(program: Mapping[str, Any], answer: Any) -> str:
    """The full-sentence answer of a program for a given answer text ("The large circle is red.")."""
    return _program_family(program).statement(program, str(answer).strip())


def make_question(family: str, objects: Sequence[SceneObject], rng: random.Random, *,
                  colours: Sequence[str] = COLOURS, shapes: Sequence[str] = SHAPES,
                  max_count: int = 4) -> Question | None:
    """A question of `family` about the scene, or None when that family can't be asked on it.

    `colours` / `shapes` are the vocabularies distractors come from (pass the dataset's
    category names for real COCO; the scene's own shapes are added); `max_count` bounds
    the count distractors.
    """
    asked = get_family(family)
    objects = list(objects)
    shapes = list(dict.fromkeys([*shapes, *(obj.shape for obj in objects)]))
    return asked.make(objects, rng, Vocabulary(colours=list(colours), shapes=shapes, max_count=max_count))


def vocabulary_texts(colours: Sequence[str] = COLOURS, shapes: Sequence[str] = SHAPES,
                     sizes: Sequence[str] = SIZES, max_count: int = 10, **_: Any) -> list[str]:
    """Texts holding every word a question or answer of any family can use over these
    vocabularies, so a tokenizer trained on a starved seed still knows them all."""
    words = [*colours, *shapes, *(plural(shape) for shape in shapes), *sizes, *RELATIONS, *YES_NO,
             *NUMBER_WORDS, *(str(k) for k in range(max_count + 1)), "object", "objects", "is", "are", "a", "an"]
    vocab = Vocabulary(colours=colours, shapes=shapes, sizes=sizes, max_count=max_count)
    texts = [" ".join(words), CAPTION_QUESTION, *MCQ_SUFFIXES.values()]
    for family in FAMILY_REGISTRY.values():
        texts += [f"{family.text(program)} {family.statement(program, answer)}"
                  for program, answer in family.examples(vocab)]
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
