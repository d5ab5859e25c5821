"""Question families over scene annotations, and the programs that verify their answers.

Every question is built from objects read out of COCO instances (by `mmloop.sources`):
category name = shape, bbox for geometry, and, in the procedural world, attributes
colour / size / row / col. existence, count, spatial and comparison need only category + bbox,
so they work on real COCO; colour, shape and size need the attributes and are skipped
(`make_question` returns None) where they are absent; multihop asks the category ("What is the
object to the left of the person?") where there are no colours or sizes.

Two families compose two steps between what is seen and the answer (`Family.reasoning_steps`):
comparison ("Are there more red circles than squares?": two counts, compared) and multihop
("What colour is the object to the left of the red circle?": a relation picks out an object,
then its attribute is read).

Each question carries a `program`: a small JSON-able dict that `answer_program` re-executes
against an image's annotations. The eliminate stage uses it to verify generated answers,
and `statement(program, answer)` turns any (program, answer) into the full-sentence answer.

A family is one class (`Family`): its name and MMBench l2-category, how it answers a program,
words it as a question and as a full-sentence answer, and makes a question about a scene.
`FAMILY_REGISTRY` holds one instance of each, in the order families are listed everywhere;
adding a family is adding one registered class.

Object references ("the large circle") are always unambiguous: a question is only asked
about an object whose description matches exactly one object of the scene. COCO crowd regions
(`iscrowd`) are groups, not objects: never counted, never referred to, but they do answer
"yes" to existence. Spatial relations hold only between boxes that do not overlap.

Category names are English nouns of any kind ("person", "knife", "skis"): plurals and articles
come from `inflect` ("people", "knives", "an umbrella"); a name already plural keeps plural
agreement ("Are there skis in the image?").
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import json
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
    crowd: bool = False  # a COCO `iscrowd` region: a group of objects, never counted as one

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


# ---------------------------------------------------------------- describing objects

@functools.cache
def _inflect_engine() -> Any:
    """The one `inflect` engine every plural and article comes from (imported on first use)."""
    import inflect

    return inflect.engine()


@functools.cache
def is_plural_name(noun: str) -> bool:
    """Whether a category name is already plural ("skis", "scissors", "glasses"): such a name
    takes plural agreement ("Are there skis ...?") and is its own plural.

    inflect's `singular_noun` alone would also call "bus" plural (of "bu"), and `plural_noun`
    alone turns "skis" into "skiss". A name is plural when it has a singular whose plural is the
    name and inflect knows no plural of the name beyond appending "s" (so "bus" -> "buses" and
    "glass" stay singular), or when it is its own singular ending in "s" (inflect's uninflected
    plurals: "scissors"; "sheep", which does not end in "s", stays singular).
    """
    if not noun.strip():
        return False
    engine = _inflect_engine()
    one = engine.singular_noun(noun)
    if one is False:
        return False
    if one == noun:
        return noun.endswith("s")
    return engine.plural_noun(one) == noun and engine.plural_noun(noun) == noun + "s"


@functools.cache
def plural(noun: str) -> str:
    """'circle' -> 'circles', 'person' -> 'people', 'knife' -> 'knives', 'sheep' -> 'sheep';
    a name already plural ('skis', 'scissors') is its own plural."""
    if not noun or is_plural_name(noun):
        return noun
    return _inflect_engine().plural_noun(noun)


def singular(noun: str) -> str:
    """The name as counted once: itself, or 'pair of skis' for a name already plural (a COCO
    annotation of "skis" or "scissors" is one pair)."""
    return f"pair of {noun}" if is_plural_name(noun) else noun


def article(phrase: str) -> str:
    """'a red circle' / 'an orange circle' / 'an umbrella' / 'a unicorn' (inflect's `a`)."""
    return _inflect_engine().a(phrase) if phrase.strip() else f"a {phrase}"


def _adjectives(selector: Mapping[str, Any]) -> list[str]:
    return [selector[key] for key in ("size", "colour") if selector.get(key)]


def _noun(selector: Mapping[str, Any]) -> str:
    return selector.get("shape") or "object"


def describe(selector: Mapping[str, Any]) -> str:
    """'large red circle' / 'red object': the words of a selector, size before colour before shape."""
    return " ".join([*_adjectives(selector), _noun(selector)])


def describe_plural(selector: Mapping[str, Any]) -> str:
    """'red circles' / 'people' / 'skis': the selector's words with its noun in the plural."""
    return " ".join([*_adjectives(selector), plural(_noun(selector))])


def is_plural(selector: Mapping[str, Any]) -> bool:
    """Whether the selector's words take plural agreement (its noun is already plural)."""
    return is_plural_name(_noun(selector))


def be(selector: Mapping[str, Any]) -> str:
    """'is' / 'are': the verb agreeing with the selector's words."""
    return "are" if is_plural(selector) else "is"


def count_phrase(selector: Mapping[str, Any], number: int) -> str:
    """'2 red circles' / '1 circle' / 'no objects' / '1 pair of skis'."""
    noun = _noun(selector)
    if number == 0:
        return " ".join(["no", *_adjectives(selector), plural(noun)])
    return " ".join([str(number), *_adjectives(selector), singular(noun) if number == 1 else plural(noun)])


def matching(objects: Sequence[SceneObject], selector: Mapping[str, Any]) -> list[SceneObject]:
    return [obj for obj in objects if obj.matches(selector)]


def counted(objects: Sequence[SceneObject]) -> list[SceneObject]:
    """The objects a question may count or refer to: all but COCO crowd regions, each of which is
    a group of objects (still there for existence, never one object)."""
    return [obj for obj in objects if not obj.crowd]


def referent(objects: Sequence[SceneObject], selector: Mapping[str, Any]) -> SceneObject | None:
    """The one object `selector` names, or None when it names none, several, or a crowd region
    (a crowd of the same category makes the name ambiguous)."""
    found = matching(objects, selector)
    return found[0] if len(found) == 1 and not found[0].crowd else None


def unique_selector(obj: SceneObject, objects: Sequence[SceneObject],
                    allowed: Sequence[Sequence[str]]) -> dict[str, Any] | None:
    """The first selector (a tuple of attribute names from `allowed`) naming `obj` alone
    (crowd regions included among the objects it must tell `obj` from)."""
    for keys in allowed:
        if any(getattr(obj, key) is None for key in keys):
            continue
        selector = {key: getattr(obj, key) for key in keys}
        if len(matching(objects, selector)) == 1:
            return selector
    return None


def overlap(a: SceneObject, b: SceneObject) -> bool:
    """Whether two boxes share area (boxes that only touch do not)."""
    (ax, ay, aw, ah), (bx, by, bw, bh) = a.bbox, b.bbox
    return min(ax + aw, bx + bw) > max(ax, bx) and min(ay + ah, by + bh) > max(ay, by)


def relation(a: SceneObject, b: SceneObject) -> str | None:
    """Where `a` is relative to `b`, or None when the boxes overlap (a cup on a saucer, a box
    inside another: "above" or "left of" would be a guess) or neither axis dominates (diagonal)."""
    if overlap(a, b):
        return None
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
    # How many steps lie between what is seen and the answer: 1 for a family that reads one thing
    # off the image (an attribute, a count, a relation), 2 for one that composes two (a comparison
    # of two counts, an attribute of the object a relation picks out). Part of a question's
    # structural difficulty.
    reasoning_steps: ClassVar[int] = 1

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

    def key(self, program: Mapping[str, Any]) -> str:
        """What makes two of this family's programs the same question (see `question_key`):
        by default the question's text."""
        return self.text(program)

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
    reasoning_steps = 1
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
        found = referent(objects, _selector(program, "target"))
        return getattr(found, self.name) if found is not None else None

    def text(self, program):
        return f"What {self.name} {be(program['target'])} the {describe(program['target'])}?"

    def statement(self, program, answer):
        target = program["target"]
        return f"The {describe(target)} {be(target)} {self.complement(answer)}."

    def make(self, objects, rng, vocab):
        described = []
        for obj in counted(objects):
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
        return answer if is_plural_name(answer) else article(answer)


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
    reasoning_steps = 1
    # Without colours, an absent category is a plausible "no" when the dataset's vocabulary lists
    # it within this many places of a present one: COCO lists its categories grouped by
    # supercategory (vehicles, animals, kitchenware, ...), so "fork" beside a present "knife" is a
    # confusion worth asking about, where a uniform draw from 80 names mostly is not.
    NEAR_PLACES = 2

    def answer(self, program, objects):
        # A crowd region counts here: a crowd of people means there are people.
        return YES if matching(objects, _selector(program, "query")) else NO

    def text(self, program):
        query = program["query"]
        if is_plural(query):
            return f"Are there {describe(query)} in the image?"
        return f"Is there {article(describe(query))} in the image?"

    def statement(self, program, answer):
        query = program["query"]
        thing = describe(query)
        yes = answer.lower() == YES
        if is_plural(query):
            return f"Yes, there are {thing} in the image." if yes else f"No, there are no {thing} in the image."
        if yes:
            return f"Yes, there is {article(thing)} in the image."
        return f"No, there is no {thing} in the image."

    def make(self, objects, rng, vocab):
        with_colour = bool(objects) and all(obj.colour is not None for obj in objects)
        keys = ("colour", "shape") if with_colour else ("shape",)
        present = {tuple(getattr(obj, key) for key in keys) for obj in objects}
        if with_colour:
            universe = [(c, s) for c in vocab.colours for s in vocab.shapes]
        else:
            # The dataset's own categories (`make_question` is given its category names).
            universe = [(s,) for s in vocab.shapes]
        absent = [combo for combo in universe if combo not in present]
        want_yes = rng.random() < 0.5
        if want_yes and present or not absent:
            if not present:
                return None
            query = rng.choice(sorted(present))
        else:
            if with_colour:
                # A plausible "no": an absent combination sharing a colour or shape with the scene.
                near = [combo for combo in absent if any(set(combo) & set(p) for p in present)]
            else:
                near = self._near_categories(absent, present, vocab)
            query = rng.choice(near or absent)
        options = _options(YES if query in present else NO, YES_NO, 2, rng)
        return self.question({"family": self.name, "query": dict(zip(keys, query))}, options, objects)

    def _near_categories(self, absent: Sequence[tuple[str]], present: Iterable[tuple[str]],
                         vocab: Vocabulary) -> list[tuple[str]]:
        place = {shape: index for index, shape in enumerate(vocab.shapes)}
        places = [place[shape] for (shape,) in present if shape in place]
        return [combo for combo in absent
                if any(abs(place[combo[0]] - other) <= self.NEAR_PLACES for other in places)]

    def examples(self, vocab):
        query = {"family": self.name, "query": vocab.example_selector()}
        return [(query, YES), (query, NO)]


@register
class Count(Family):
    name = "count"
    l2_category = "instance"
    reasoning_steps = 1
    # Options are the answer and the counts nearest it, at least 0..MIN_TOP.
    MIN_TOP = 3
    OPTION_COUNT = 4

    def answer(self, program, objects):
        # Crowd regions are groups, never one object: "18 sheep" for 18 sheep and a crowd region.
        return str(len(matching(counted(objects), _selector(program, "query"))))

    def text(self, program):
        return f"How many {describe_plural(program['query'])} are there?"

    def statement(self, program, answer):
        number = int(answer)
        verb = "is" if number == 1 else "are"
        return f"There {verb} {count_phrase(program['query'], number)} in the image."

    def make(self, objects, rng, vocab):
        individuals = counted(objects)
        present = list(dict.fromkeys(obj.shape for obj in individuals))
        crowds = {obj.shape for obj in objects if obj.crowd}
        # Ask about the categories on the image, and about absent ones only up to as many as are
        # present. Drawing from the whole vocabulary made "0" the answer of nearly every count
        # question on a large one (80 COCO categories, 2-3 on an image: 14 of 16 answers were "0"),
        # which teaches a model to answer "0" without looking; a bounded share of absent
        # categories (from the dataset's own vocabulary) keeps "0" a minority answer that still
        # needs the image. A category seen only as a crowd region is neither present nor absent:
        # it is not asked.
        absent = [shape for shape in vocab.shapes if shape not in present and shape not in crowds]
        if len(absent) > len(present):
            absent = rng.sample(absent, len(present))
        asked = set(present) | set(absent)
        choices: list[dict[str, Any]] = [{}]
        choices += [{"shape": shape} for shape in dict.fromkeys([*vocab.shapes, *present]) if shape in asked]
        if individuals and all(obj.colour is not None for obj in individuals):
            present_colours = sorted({obj.colour for obj in individuals})
            choices += [{"colour": colour} for colour in present_colours]
        query = rng.choice(choices)
        answer = len(matching(individuals, query))
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
    reasoning_steps = 1
    selectors = (("shape",), ("colour", "shape"), ("size", "colour", "shape"))

    def answer(self, program, objects):
        a = referent(objects, _selector(program, "a"))
        b = referent(objects, _selector(program, "b"))
        if a is None or b is None:
            return None
        return relation(a, b)

    def text(self, program):
        a, b = program["a"], program["b"]
        return f"Where {be(a)} the {describe(a)} relative to the {describe(b)}?"

    def statement(self, program, answer):
        a, b = program["a"], program["b"]
        where = f"to the {answer}" if answer in (LEFT_OF, RIGHT_OF) else answer
        return f"The {describe(a)} {be(a)} {where} the {describe(b)}."

    def key(self, program):
        # "Where is A relative to B?" and "Where is B relative to A?" ask one thing: the key is
        # the unordered pair of selectors, so a conversation asks only one of them.
        a, b = (json.dumps(_selector(program, side), sort_keys=True) for side in ("a", "b"))
        return f"{self.name} {json.dumps(sorted([a, b]))}"

    def make(self, objects, rng, vocab):
        pairs = []
        for a in counted(objects):
            for b in counted(objects):
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


@register
class Comparison(Family):
    """"Are there more red circles than squares?": two counts and a comparison of them.

    Program `{"family": "comparison", "a": selector, "b": selector}`, answered "yes" when more
    objects match `a` than `b` (a tie is "no"). A crowd region matching either side is an unknown
    number of objects, so the comparison has no answer there.
    """

    name = "comparison"
    # Its premises are two counts of instances, and MMBench files comparing instances under
    # (cross-instance) perception: grouped with count and existence, the skills it builds on,
    # rather than with spatial, with which it shares no skill.
    l2_category = "instance"
    reasoning_steps = 2

    def answer(self, program, objects):
        a, b = _selector(program, "a"), _selector(program, "b")
        if any(obj.crowd and (obj.matches(a) or obj.matches(b)) for obj in objects):
            return None
        individuals = counted(objects)
        return YES if len(matching(individuals, a)) > len(matching(individuals, b)) else NO

    def text(self, program):
        return f"Are there more {describe_plural(program['a'])} than {describe_plural(program['b'])}?"

    def statement(self, program, answer):
        more = f"more {describe_plural(program['a'])} than {describe_plural(program['b'])}"
        return f"Yes, there are {more}." if answer.lower() == YES else f"No, there are not {more}."

    def make(self, objects, rng, vocab):
        individuals = counted(objects)
        coloured = bool(individuals) and all(obj.colour is not None for obj in individuals)
        universe = [{"shape": shape} for shape in vocab.shapes]
        if coloured:
            universe += [{"colour": colour} for colour in vocab.colours]
            universe += [{"colour": colour, "shape": shape} for colour in vocab.colours for shape in vocab.shapes]
        present: list[dict[str, Any]] = []
        for obj in individuals:
            for keys in (("shape",), ("colour",), ("colour", "shape")) if coloured else (("shape",),):
                selector = {key: getattr(obj, key) for key in keys}
                if selector not in present:
                    present.append(selector)
        # Absent things (matching no object, crowds included) as in count: at most as many as are
        # present, so that most comparisons are between things on the image.
        absent = [selector for selector in universe if not matching(objects, selector)]
        if len(absent) > len(present):
            absent = rng.sample(absent, len(present))
        # {(answer, both on the image): [(a, b), ...]}
        pairs: dict[tuple[str, bool], list[tuple[dict[str, Any], dict[str, Any]]]] = {
            (answer, both): [] for answer in YES_NO for both in (True, False)}
        # Each side's count, or None where a crowd region makes it unknown (as in `answer`).
        sides = [(selector, None if any(obj.crowd and obj.matches(selector) for obj in objects)
                  else len(matching(individuals, selector))) for selector in [*present, *absent]]
        for a, count_a in sides:
            for b, count_b in sides:
                # Different, and neither a part of the other ("more red circles than circles");
                # informative: at least one of the two on the image.
                if (a.items() <= b.items() or b.items() <= a.items() or count_a is None or count_b is None
                        or not count_a and not count_b):
                    continue
                pairs[YES if count_a > count_b else NO, bool(count_a and count_b)].append((a, b))
        # "yes" and "no" equally often, and two things on the image wherever the scene has a pair
        # with the drawn answer: with one of them absent the question is only an existence question.
        want = YES if rng.random() < 0.5 else NO
        other = NO if want == YES else YES
        chosen = pairs[want, True] or pairs[want, False] or pairs[other, True] or pairs[other, False]
        if not chosen:
            return None
        a, b = rng.choice(chosen)
        options = _options(self.answer({"a": a, "b": b}, objects), YES_NO, 2, rng)
        return self.question({"family": self.name, "a": a, "b": b}, options, objects)

    def examples(self, vocab):
        program = {"family": self.name, "a": vocab.example_selector(), "b": {"shape": vocab.shapes[-1]}}
        return [(program, YES), (program, NO)]


# How a relation reads before the object it relates to ("the object to the left of the red circle").
RELATION_PHRASES = {LEFT_OF: "to the left of", RIGHT_OF: "to the right of", ABOVE: "above", BELOW: "below"}


def _leans(obj: SceneObject, anchor: SceneObject, where: str) -> bool:
    """Whether `obj` lies, loosely, in direction `where` of `anchor`: boxes apart and the offset
    along that direction larger than the offset across it. Every object `relation` puts there
    leans there; so do the near-diagonal ones `relation` refuses, which a reader might still
    count as "the object to the left"."""
    if overlap(obj, anchor):
        return False
    (ox, oy), (ax, ay) = obj.centre, anchor.centre
    dx, dy = ox - ax, oy - ay
    along, across = {LEFT_OF: (-dx, dy), RIGHT_OF: (dx, dy), ABOVE: (-dy, dx), BELOW: (dy, dx)}[where]
    return along > abs(across)


@register
class Multihop(Family):
    """"What colour is the object to the left of the red circle?": an attribute of the object a
    relation to a named anchor picks out.

    Program `{"family": "multihop", "attribute": "colour" | "shape" | "size", "relation": one of
    RELATIONS, "anchor": selector}`. Answered only when the anchor names one object and exactly one
    object stands in the relation to it (`relation`), with no other object, crowd regions included,
    even leaning that way (`_leans`): otherwise "the object to the left" is ambiguous. A shape
    question reads "What is the object ...?", which also fits real COCO, where the shape is the
    category ("What is the object to the left of the person?" "The object ... is a dog.").
    """

    name = "multihop"
    # MMBench's relation reasoning: the question is answered through a spatial relation between
    # two objects, and what it adds to spatial (reading the related object's attribute) is the
    # second step, not a different skill.
    l2_category = "relation"
    reasoning_steps = 2
    attributes = ("colour", "shape", "size")
    anchors = (("shape",), ("colour", "shape"), ("size", "colour", "shape"))

    def answer(self, program, objects):
        attribute, where = self._attribute(program), self._relation(program)
        target = self.target(objects, _selector(program, "anchor"), where)
        return None if target is None else getattr(target, attribute)

    @staticmethod
    def target(objects: Sequence[SceneObject], anchor: Mapping[str, Any], where: str) -> SceneObject | None:
        """The one object in relation `where` to the one object `anchor` names, or None."""
        found = referent(objects, anchor)
        if found is None:
            return None
        leaning = [obj for obj in objects if obj is not found and _leans(obj, found, where)]
        if len(leaning) != 1 or leaning[0].crowd or relation(leaning[0], found) != where:
            return None
        return leaning[0]

    def _attribute(self, program: Mapping[str, Any]) -> str:
        attribute = program.get("attribute")
        if attribute not in self.attributes:
            raise ValueError(f"question program {program!r}: 'attribute' must be one of "
                             f"{', '.join(self.attributes)}, got {attribute!r}")
        return attribute

    @staticmethod
    def _relation(program: Mapping[str, Any]) -> str:
        where = program.get("relation")
        if where not in RELATIONS:
            raise ValueError(f"question program {program!r}: 'relation' must be one of "
                             f"{', '.join(RELATIONS)}, got {where!r}")
        return where

    def _object(self, program: Mapping[str, Any]) -> str:
        anchor = program["anchor"]
        return f"the object {RELATION_PHRASES[self._relation(program)]} the {describe(anchor)}"

    def text(self, program):
        attribute = self._attribute(program)
        if attribute == "shape":
            return f"What is {self._object(program)}?"
        return f"What {attribute} is {self._object(program)}?"

    def statement(self, program, answer):
        if self._attribute(program) == "shape":
            answer = article(singular(answer))  # "a dog", "an umbrella", "a pair of skis"
        subject = self._object(program)
        return f"{subject[0].upper()}{subject[1:]} is {answer}."

    def make(self, objects, rng, vocab):
        found = []
        for anchor in counted(objects):
            selector = unique_selector(anchor, objects, self.anchors)
            if selector is None:
                continue
            for where in RELATIONS:
                target = self.target(objects, selector, where)
                if target is not None:
                    found += [(attribute, where, selector) for attribute in self.attributes
                              if getattr(target, attribute) is not None]
        if not found:
            return None
        attribute, where, selector = rng.choice(found)
        program = {"family": self.name, "attribute": attribute, "relation": where, "anchor": selector}
        # Options as the attribute's own family draws them: its vocabulary, values seen first.
        asks = FAMILY_REGISTRY[attribute]
        seen = [getattr(obj, attribute) for obj in objects if getattr(obj, attribute) is not None]
        options = _options(self.answer(program, objects), asks.candidates(vocab), asks.option_count, rng,
                           preferred=seen)
        return self.question(program, options, objects)

    def examples(self, vocab):
        anchor = vocab.example_selector()
        answers = {"colour": vocab.colours[0], "shape": vocab.shapes[0], "size": vocab.sizes[0]}
        return [({"family": self.name, "attribute": attribute, "relation": where, "anchor": anchor}, answers[attribute])
                for attribute, where in zip((*self.attributes, self.attributes[0]), RELATIONS)]


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

def question_key(question: Question) -> str:
    """What makes two questions about one image the same question: a conversation asks each once.

    The question's text, except where its family says otherwise: a spatial question's key is its
    unordered pair of objects, so "where is A relative to B" and "where is B relative to A" share one.
    """
    family = FAMILY_REGISTRY.get(question.program.get("family"))
    return family.key(question.program) if family is not None else question.question


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


def dataset_vocabulary(objects_by_image: Mapping[str, Sequence[SceneObject]], categories: Sequence[str]
                       ) -> tuple[list[str], list[str]]:
    """(colours, shapes) a dataset's questions draw distractors and absent things from: the colours
    its objects carry (sorted; topped up to four from COLOURS) and its category names."""
    seen = sorted({obj.colour for objects in objects_by_image.values() for obj in objects if obj.colour})
    colours = list(dict.fromkeys([*seen, *COLOURS]))[: max(len(seen), 4)]
    return colours, list(categories)


def make_question(family: str, objects: Sequence[SceneObject], rng: random.Random, *,
                  colours: Sequence[str] = COLOURS, shapes: Sequence[str] = SHAPES,
                  max_count: int = 4) -> Question | None:
    """A question of `family` about the scene, or None when that family can't be asked on it.

    `colours` / `shapes` are the vocabularies distractors, existence negatives and the absent
    categories of count questions come from (pass the dataset's category names for real COCO,
    in the dataset's order; the scene's own shapes are added); `max_count` bounds the count
    distractors.
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
    already_plural = [shape for shape in shapes if is_plural_name(shape)]
    if already_plural:  # their own wording: "Are there skis ...?", "There is 1 pair of skis ..."
        words += ["Is", "Are", "there", *(singular(shape) for shape in already_plural)]
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
