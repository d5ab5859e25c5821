"""Evolution of the annotations teacher's rows: MMEvol's three operators, correct by construction.

MMEvol (arXiv 2409.05840) evolves seed instructions for several rounds with three operators
and, after each round, eliminates the children that did not improve on their direct parent.
Here the rows come from the annotations teacher, so each carries a question program
(`provenance.program`), and evolution works on programs, never on free text:

- perception: the same family, its target/query named by more attributes, or a different,
  less salient object (one that needs more attributes to be named alone): "the circle" ->
  "the small red circle"; a count over a colour + shape instead of a shape; an existence
  question whose added attribute makes a fine-grained "no" ("Is there a large red circle?"
  when the only red circle is small).
- reasoning: a program with more reasoning steps built from the parent's referents: a count
  (or an existence) of A -> "Are there more A than B?" (comparison); the attribute of X -> that
  attribute of the object in a relation to X (multihop); a relation of A to B -> an attribute
  of the object in that relation to B (multihop).
- interaction: another form of the same program: mcq <-> short answer, or a follow-up turn
  (the parent's question and answer as a first turn, then a question that depends on the first
  answer: "What colour is the circle?" "red" -> "How many objects of that colour are there?").

Every child's answer is `questions.answer_program` of its program on the image's objects, so
`elimination.verify_answer` accepts it. A follow-up's program is the second question's own
(resolved) program, plus a "context" key: the earlier turns as curation records
{format, program, options, answer}; `answer_program` ignores the key, `judge` re-executes it.

Difficulty (`difficulty`) is structural, on MMEvol's 1..10 scale:

    difficulty = clip(1 + 2.0 * (steps - 1) + 0.5 * attributes + 1.0 * (turns - 1) + 2.0 * choice, 1, 10)

- steps: the reasoning steps of the program's family (`Family.reasoning_steps`: 1 for the six
  single-read families, 2 for comparison and multihop), summed over the turns of a follow-up;
- attributes: the attribute values named by the selectors of every program of the chain
  (query / target / a / b / anchor: {"shape": "circle"} is 1, {"size", "colour", "shape"} 3);
- turns: the user turns (a row's conversation; a program's context plus one);
- choice: how much an answer must be produced rather than recognised: 1 - 1/k for a
  multiple-choice row with k options (yes/no 0.5, four options 0.75), 1 for a short (free)
  answer, 0 for a bare program (no answer form).

`judge(child, parent, objects)` keeps a child when it re-executes correctly and is strictly
more difficult than its direct parent; `evolve` runs the rounds (survivors seed the next one),
returning every child with its verdict and the per-round, per-operator statistics.
"""

from __future__ import annotations

import itertools
import json
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from mmloop import questions
from mmloop.io import stable_hash
from mmloop.loop.elimination import normalise_text, verify_answer
from mmloop.questions import SceneObject, Vocabulary
from mmloop.schema import (ANSWER_MISMATCH, DUPLICATE, JUDGE_LOW, NO_GAIN, VISUALLY_INDEPENDENT, make_sample_id,
                           sample)

PERCEPTION, REASONING, INTERACTION = OPERATORS = ("perception", "reasoning", "interaction")
# Why a child is dropped, in the order the judge checks.
DROP_REASONS = (ANSWER_MISMATCH, NO_GAIN, JUDGE_LOW, DUPLICATE, VISUALLY_INDEPENDENT)

# The attributes a question's words can name an object by (`questions.describe`), in its order.
DESCRIBED = ("size", "colour", "shape")
# The attribute families and the attribute each asks for (multihop asks any of them).
ATTRIBUTE_FAMILIES = ("colour", "shape", "size")
VOCABULARY_FIELD = {"colour": "colours", "shape": "shapes", "size": "sizes"}
# Where a program keeps its object selectors.
SELECTOR_KEYS = ("query", "target", "a", "b", "anchor")
COMPARISON, MULTIHOP, COUNT, EXISTENCE, SPATIAL = "comparison", "multihop", "count", "existence", "spatial"
# Option counts of the families without an `option_count`.
YES_NO_OPTIONS, COUNT_OPTIONS, RELATION_OPTIONS = 2, 4, 4
SHORT_FORMATS = ("short", "open")

# The difficulty formula's weights (see the module docstring).
STEP_WEIGHT, ATTRIBUTE_WEIGHT, TURN_WEIGHT, CHOICE_WEIGHT = 2.0, 0.5, 1.0, 2.0
MIN_DIFFICULTY, MAX_DIFFICULTY = 1.0, 10.0


# ---------------------------------------------------------------- programs

def row_program(row: Mapping[str, Any]) -> dict[str, Any] | None:
    """The question program of a row (provenance.program, JSON), or None when it has none or
    it is not one program (a curated conversation records a list of turns)."""
    text = (row.get("provenance") or {}).get("program")
    if not text:
        return None
    program = json.loads(text) if isinstance(text, str) else text
    return dict(program) if isinstance(program, Mapping) and "family" in program else None


def context_of(program: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The earlier turns of a follow-up program ([] for a single question)."""
    return list(program.get("context") or [])


def bare(program: Mapping[str, Any]) -> dict[str, Any]:
    """The program without its context: the last question alone."""
    return {key: value for key, value in program.items() if key != "context"}


def has_family(name: str) -> bool:
    return name in questions.FAMILY_REGISTRY


def reasoning_steps(program: Mapping[str, Any]) -> int:
    family = questions.FAMILY_REGISTRY.get(program.get("family"))
    return int(getattr(family, "reasoning_steps", 1)) if family is not None else 1


def attribute_count(program: Mapping[str, Any]) -> int:
    """How many attribute values the program's selectors name."""
    return sum(sum(1 for value in program[key].values() if value is not None)
               for key in SELECTOR_KEYS if isinstance(program.get(key), Mapping))


# ---------------------------------------------------------------- difficulty

def _choice(row_format: str | None, option_count: int) -> float:
    if row_format == "mcq":
        return 1.0 - 1.0 / option_count if option_count else 0.0
    if row_format in SHORT_FORMATS:
        return 1.0
    return 0.0


def difficulty(program_or_row: Mapping[str, Any]) -> float:
    """Structural difficulty on 1..10 of a program or a sample row (formula in the module docstring)."""
    if "family" in program_or_row:
        program: Mapping[str, Any] | None = program_or_row
        row_format, option_count, turns = None, 0, 1 + len(context_of(program_or_row))
    else:
        row = program_or_row
        program = row_program(row)
        row_format, option_count = row.get("format"), len(row.get("options") or [])
        turns = sum(1 for turn in row.get("conversations") or [] if turn["role"] == "user")
        turns = turns or (1 + len(context_of(program)) if program else 1)
    chain = [*(record["program"] for record in context_of(program)), program] if program else []
    steps = sum(reasoning_steps(p) for p in chain) if chain else 1
    attributes = sum(attribute_count(p) for p in chain)
    raw = (1.0 + STEP_WEIGHT * (steps - 1) + ATTRIBUTE_WEIGHT * attributes + TURN_WEIGHT * (turns - 1)
           + CHOICE_WEIGHT * _choice(row_format, option_count))
    return round(min(MAX_DIFFICULTY, max(MIN_DIFFICULTY, raw)), 4)


# ---------------------------------------------------------------- options and wording

def scene_vocabulary(vocabulary: Vocabulary, objects: Sequence[SceneObject]) -> Vocabulary:
    """The dataset's vocabulary with the scene's own shapes added (as `make_question` does)."""
    shapes = list(dict.fromkeys([*vocabulary.shapes, *(obj.shape for obj in objects)]))
    return Vocabulary(colours=list(vocabulary.colours), shapes=shapes, sizes=list(vocabulary.sizes),
                      max_count=vocabulary.max_count)


def asked_attribute(program: Mapping[str, Any]) -> str | None:
    """The attribute an attribute or multihop program asks for."""
    family = program.get("family")
    if family in ATTRIBUTE_FAMILIES:
        return family
    if family == MULTIHOP:
        return program.get("attribute")
    return None


def option_count(program: Mapping[str, Any]) -> int:
    """How many options the family offers (its maker's count)."""
    attribute = asked_attribute(program)
    if attribute is not None:
        return int(getattr(questions.FAMILY_REGISTRY[attribute], "option_count"))
    if program["family"] == COUNT:
        return COUNT_OPTIONS
    if program["family"] == SPATIAL:
        return RELATION_OPTIONS
    return YES_NO_OPTIONS


def make_options(program: Mapping[str, Any], answer: str, objects: Sequence[SceneObject], vocab: Vocabulary,
                 rng: random.Random, count: int | None = None) -> tuple[str, ...]:
    """`count` options (default: the family's) holding `answer`, distractors drawn as the family's
    maker draws them; () when there are not enough."""
    count = count or option_count(program)
    attribute = asked_attribute(program)
    preferred: list[str] = []
    if attribute is not None:
        candidates = list(getattr(vocab, VOCABULARY_FIELD[attribute]))
        preferred = [getattr(obj, attribute) for obj in objects if getattr(obj, attribute) is not None]
    elif program["family"] == COUNT:
        number = int(answer)
        top = max(vocab.max_count, number + 1, questions.Count.MIN_TOP)
        candidates = [str(k) for k in sorted(range(top + 1), key=lambda k: (abs(k - number), k))[:count]]
    elif program["family"] == SPATIAL:
        candidates = list(questions.RELATIONS)
    else:
        candidates = list(questions.YES_NO)
    return questions._options(answer, candidates, count, rng, preferred=preferred)


def follow_up_text(program: Mapping[str, Any], record: Mapping[str, Any]) -> str | None:
    """How the second turn asks `program` after the first turn `record` ({program, answer}),
    or None when `program` does not follow from that turn.

    - the attribute v of something -> "How many objects of that <attribute> are there?" (count of v);
    - "Is there a Q?" yes -> "How many of them are there?" (count of Q);
    - "How many A are there?" -> "Are there more of them than B?" (comparison of A with B).
    """
    first, answer = record["program"], str(record["answer"])
    attribute = asked_attribute(first)
    family = program.get("family")
    if family == COUNT and attribute is not None and program.get("query") == {attribute: answer}:
        return f"How many objects of that {attribute} are there?"
    if family == COUNT and first.get("family") == EXISTENCE and answer == questions.YES \
            and program.get("query") == first.get("query"):
        return "How many of them are there?"
    if family == COMPARISON and first.get("family") == COUNT and program.get("a") == first.get("query") \
            and isinstance(program.get("b"), Mapping):
        return f"Are there more of them than {questions.describe_plural(program['b'])}?"
    return None


def _question(program: Mapping[str, Any], text: str, options: Sequence[str], answer: str) -> questions.Question:
    plain = bare(program)
    return questions.Question(category=plain["family"], question=text, options=tuple(options), answer=answer,
                              statement=questions.statement(plain, answer), program=dict(program))


def render(program: Mapping[str, Any], row_format: str, options: Sequence[str], answer: str,
           answer_format: str) -> list[dict[str, str]]:
    """The conversation of a (follow-up) program: each context turn, then the program's own turn."""
    records = [*context_of(program), {"program": bare(program), "format": row_format,
                                      "options": list(options), "answer": answer}]
    conversations: list[dict[str, str]] = []
    for position, record in enumerate(records):
        if position == 0:
            text = questions.question_text(record["program"])
        else:
            text = follow_up_text(record["program"], records[position - 1])
            if text is None:
                raise ValueError(f"program {record['program']!r} does not follow from {records[position - 1]!r}")
        made = _question(record["program"], text, record["options"], str(record["answer"]))
        conversations += questions.turns(made, record["format"], answer_format)
    return conversations


# ---------------------------------------------------------------- the operators

@dataclass(frozen=True)
class Draft:
    """A child before it is a row: its program (with any context), format and options."""

    program: dict[str, Any]
    row_format: str
    options: tuple[str, ...]


def _extended(selector: Mapping[str, Any], obj: SceneObject, fields: Sequence[str]) -> list[dict[str, Any]]:
    """`selector` plus one more of `obj`'s attributes among `fields` (each such extension)."""
    return [{**selector, field: getattr(obj, field)} for field in fields
            if field not in selector and getattr(obj, field) is not None]


def _narrowed(selector: Mapping[str, Any], objects: Sequence[SceneObject]) -> list[dict[str, Any]]:
    """`selector` plus one attribute value some object it matches has: a sub-population."""
    found: dict[str, dict[str, Any]] = {}
    for obj in questions.matching(questions.counted(objects), selector):
        for extended in _extended(selector, obj, DESCRIBED):
            found.setdefault(json.dumps(extended, sort_keys=True), extended)
    return [found[key] for key in sorted(found)]


def _less_salient(obj: SceneObject, objects: Sequence[SceneObject], fields: Sequence[str],
                  more_than: int) -> dict[str, Any] | None:
    """The smallest selector over `fields` with more than `more_than` attributes naming `obj` alone."""
    usable = [field for field in fields if getattr(obj, field) is not None]
    for size in range(more_than + 1, len(usable) + 1):
        for keys in itertools.combinations(usable, size):
            selector = {key: getattr(obj, key) for key in keys}
            if len(questions.matching(objects, selector)) == 1:
                return selector
    return None


def _perception_programs(program: Mapping[str, Any], objects: Sequence[SceneObject]) -> list[dict[str, Any]]:
    family = program["family"]
    found: list[dict[str, Any]] = []
    if family in ATTRIBUTE_FAMILIES:
        target = program["target"]
        fields = [field for field in DESCRIBED if field != family]
        named = questions.referent(objects, target)
        if named is None:
            return []
        found += [{**program, "target": selector} for selector in _extended(target, named, fields)]
        for other in questions.counted(objects):
            if other is named or getattr(other, family) is None:
                continue
            selector = _less_salient(other, objects, fields, more_than=attribute_count({"target": target}))
            if selector is not None:
                found.append({**program, "target": selector})
    elif family == EXISTENCE:
        query = program["query"]
        for field in DESCRIBED:
            if field in query:
                continue
            values = sorted({getattr(obj, field) for obj in objects if getattr(obj, field) is not None})
            found += [{**program, "query": {**query, field: value}} for value in values]
    elif family == COUNT:
        found += [{**program, "query": selector} for selector in _narrowed(program["query"], objects)]
    elif family in (SPATIAL, MULTIHOP):
        for side in ("a", "b") if family == SPATIAL else ("anchor",):
            named = questions.referent(objects, program[side])
            if named is not None:
                found += [{**program, side: selector} for selector in _extended(program[side], named, DESCRIBED)]
    elif family == COMPARISON:
        for side in ("a", "b"):
            found += [{**program, side: selector} for selector in _narrowed(program[side], objects)]
        # Neither side a part of the other: "more red circles than circles" is always "no".
        found = [candidate for candidate in found if not (candidate["a"].items() <= candidate["b"].items()
                                                          or candidate["b"].items() <= candidate["a"].items())]
    return found


def _same_keys_selectors(selector: Mapping[str, Any], objects: Sequence[SceneObject]) -> list[dict[str, Any]]:
    """Selectors over the same attributes as `selector` naming other things on the scene."""
    found: dict[str, dict[str, Any]] = {}
    for obj in questions.counted(objects):
        other = {key: getattr(obj, key) for key in selector}
        if other != dict(selector) and all(value is not None for value in other.values()):
            found.setdefault(json.dumps(other, sort_keys=True), other)
    return [found[key] for key in sorted(found)]


def _reasoning_programs(program: Mapping[str, Any], objects: Sequence[SceneObject]) -> list[dict[str, Any]]:
    family = program["family"]
    found: list[dict[str, Any]] = []
    if family in (COUNT, EXISTENCE) and has_family(COMPARISON):
        query = program["query"]
        if query:  # "more objects than circles" is nearly always yes
            found += [{"family": COMPARISON, "a": dict(query), "b": other}
                      for other in _same_keys_selectors(query, objects)]
    elif family in ATTRIBUTE_FAMILIES and has_family(MULTIHOP):
        named = questions.referent(objects, program["target"])
        if named is not None:
            relations = sorted({questions.relation(other, named) for other in questions.counted(objects)
                                if other is not named} - {None})
            found += [{"family": MULTIHOP, "attribute": family, "relation": relation,
                       "anchor": dict(program["target"])} for relation in relations]
    elif family == SPATIAL and has_family(MULTIHOP):
        relation = questions.answer_program(program, objects)
        if relation is not None:
            found += [{"family": MULTIHOP, "attribute": attribute, "relation": relation, "anchor": dict(program["b"])}
                      for attribute in ATTRIBUTE_FAMILIES]
    return found


def _follow_up_programs(program: Mapping[str, Any], answer: str) -> list[dict[str, Any]]:
    """Second questions that depend on the first turn's answer (see `follow_up_text`)."""
    family, attribute = program["family"], asked_attribute(program)
    if attribute is not None and has_family(COUNT):
        return [{"family": COUNT, "query": {attribute: answer}}]
    if family == EXISTENCE and answer == questions.YES:
        return [{"family": COUNT, "query": dict(program["query"])}]
    return []


def _answered(candidates: Sequence[dict[str, Any]], objects: Sequence[SceneObject],
              exclude: Mapping[str, Any]) -> list[tuple[dict[str, Any], str]]:
    """(program, answer) for each distinct candidate that has an answer on the scene."""
    seen: set[str] = {json.dumps(dict(exclude), sort_keys=True)}
    answered = []
    for candidate in candidates:
        key = json.dumps(candidate, sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        answer = questions.answer_program(candidate, objects)
        if answer is not None:
            answered.append((candidate, answer))
    return answered


def _perceive(row, program, objects, vocab, rng) -> Draft | None:
    if context_of(program):
        return None  # a follow-up's second question is bound to its first answer
    found = _answered(_perception_programs(program, objects), objects, program)
    if not found:
        return None
    child, answer = rng.choice(found)
    return _draft(child, answer, row["format"], objects, vocab, rng, len(row.get("options") or []) or None)


def _reason(row, program, objects, vocab, rng) -> Draft | None:
    if context_of(program):
        return None
    found = _answered(_reasoning_programs(program, objects), objects, program)
    if not found:
        return None
    child, answer = rng.choice(found)
    return _draft(child, answer, row["format"], objects, vocab, rng)


def _interact(row, program, objects, vocab, rng) -> Draft | None:
    drafts: list[Draft] = []
    answer = str(row["answer"])
    if row["format"] == "mcq":
        drafts.append(Draft(program, "short", ()))
    elif row["format"] == "short":
        options = make_options(bare(program), answer, objects, vocab, rng)
        if options:
            drafts.append(Draft(program, "mcq", options))
    if not context_of(program) and row["format"] in ("mcq", "short"):
        record = {"format": row["format"], "program": program, "options": list(row.get("options") or []),
                  "answer": answer}
        for child, child_answer in _answered(_follow_up_programs(program, answer), objects, program):
            draft = _draft({**child, "context": [record]}, child_answer, row["format"], objects, vocab, rng)
            if draft is not None:
                drafts.append(draft)
    if program["family"] == COUNT and not context_of(program) and row["format"] in ("mcq", "short") \
            and program["query"] and answer != "0" and has_family(COMPARISON):
        # "How many A?" -> "Are there more of them than B?": the count's referent, compared
        # (not after "none": "more of them" would refer to nothing).
        record = {"format": row["format"], "program": program, "options": list(row.get("options") or []),
                  "answer": answer}
        others = _answered([{"family": COMPARISON, "a": dict(program["query"]), "b": other}
                            for other in _same_keys_selectors(program["query"], objects)], objects, program)
        if others:
            child, child_answer = rng.choice(others)
            draft = _draft({**child, "context": [record]}, child_answer, row["format"], objects, vocab, rng)
            if draft is not None:
                drafts.append(draft)
    return rng.choice(drafts) if drafts else None


def _draft(program: dict[str, Any], answer: str, row_format: str, objects, vocab, rng,
           count: int | None = None) -> Draft | None:
    if row_format != "mcq":
        return Draft(program, row_format, ())
    options = make_options(bare(program), answer, objects, vocab, rng, count)
    return Draft(program, row_format, options) if options else None


OPERATOR_FUNCTIONS = {PERCEPTION: _perceive, REASONING: _reason, INTERACTION: _interact}


def evolve_row(row: Mapping[str, Any], objects: Sequence[SceneObject], rng: random.Random, *,
               vocabulary: Vocabulary, operator: str, answer_format: str, iteration: int | str,
               round: int) -> dict[str, Any] | None:
    """One child of a generated row (with a question program) on the same image, or None when
    `operator` cannot apply to it. The child's answer is its program's answer on `objects`."""
    if operator not in OPERATOR_FUNCTIONS:
        raise ValueError(f"unknown evolution operator {operator!r} (known: {', '.join(OPERATORS)})")
    program = row_program(row)
    if program is None or not has_family(program["family"]) or row.get("format") not in ("mcq", "short"):
        return None
    objects = list(objects)
    vocab = scene_vocabulary(vocabulary, objects)
    draft = OPERATOR_FUNCTIONS[operator](row, program, objects, vocab, rng)
    if draft is None:
        return None
    return child_row(row, draft, objects, operator=operator, answer_format=answer_format,
                     iteration=iteration, round=round)


def child_row(parent: Mapping[str, Any], draft: Draft, objects: Sequence[SceneObject], *, operator: str,
              answer_format: str, iteration: int | str, round: int) -> dict[str, Any] | None:
    """The evolved row of a draft: its answer is the program's on `objects` (None when it has none,
    or an mcq draft's options miss it). `question` is the last question's own wording (a follow-up's
    "How many objects of that colour?" is "How many red objects are there?"), so elimination's
    duplicate check compares what is asked; the conversation words it as a follow-up."""
    plain = bare(draft.program)
    answer = questions.answer_program(plain, objects)
    if answer is None or (draft.row_format == "mcq" and answer not in draft.options):
        return None
    conversations = render(draft.program, draft.row_format, draft.options, answer, answer_format)
    return sample(
        sample_id=make_sample_id(parent["image_sha256"], conversations, "evolved", parent["sample_id"]),
        parent_ids=[parent["sample_id"]], iteration=int(iteration), origin="evolved",
        image=parent["image"], image_sha256=parent["image_sha256"], conversations=conversations,
        category=plain["family"], format=draft.row_format, question=questions.question_text(plain),
        options=list(draft.options), answer=answer,
        provenance={"backend": "annotations", "prompt_id": f"evolution/{operator}", "operator": operator,
                    "round": int(round), "program": draft.program, "model": None},
    )


# ---------------------------------------------------------------- the judge

def verify(row: Mapping[str, Any], objects: Sequence[SceneObject]) -> bool:
    """Whether a row is correct on its image: its program (and every context turn's) re-executes
    to the recorded answers, each follow-up follows from its turn, and the conversation is the
    programs' rendering."""
    program = row_program(row)
    if program is None or verify_answer(row, {row["image_sha256"]: objects}) is not True:
        return False
    try:
        for record in context_of(program):
            if questions.answer_program(record["program"], objects) != str(record["answer"]):
                return False
        rendered = [render(program, row["format"], row.get("options") or [], row["answer"], answer_format)
                    for answer_format in ("letter", "option")]
    except (KeyError, TypeError, ValueError):
        return False
    return list(row.get("conversations") or []) in rendered


def judge(child: Mapping[str, Any], parent: Mapping[str, Any], objects: Sequence[SceneObject]
          ) -> tuple[bool, float, float, str | None]:
    """(improved, difficulty of the parent, difficulty of the child, reason): MMEvol's elimination
    against the direct parent, structurally. Improved when the child re-executes correctly on
    `objects` and is strictly more difficult; reason is None then, else answer_mismatch or no_gain."""
    before, after = difficulty(parent), difficulty(child)
    if not verify(child, objects):
        return False, before, after, ANSWER_MISMATCH
    if after <= before:
        return False, before, after, NO_GAIN
    return True, before, after, None


# ---------------------------------------------------------------- the rounds

@dataclass
class Verdict:
    """One evolved child: the row (kept / reject_reason / scores filled) and how it was judged."""

    row: dict[str, Any]
    parent_id: str
    operator: str
    round: int
    difficulty_parent: float
    difficulty_child: float

    @property
    def kept(self) -> bool:
        return bool(self.row["kept"])

    @property
    def reason(self) -> str | None:
        return self.row["reject_reason"]

    def as_dict(self) -> dict[str, Any]:
        return {"sample_id": self.row["sample_id"], "parent_id": self.parent_id, "operator": self.operator,
                "round": self.round, "kept": self.kept, "reason": self.reason,
                "difficulty_parent": self.difficulty_parent, "difficulty_child": self.difficulty_child,
                "scores": dict(self.row["scores"])}


def check_weights(operator_weights: Mapping[str, float]) -> dict[str, float]:
    weights = {name: float(weight) for name, weight in operator_weights.items()}
    unknown = set(weights) - set(OPERATORS)
    if unknown:
        raise ValueError(f"evolution operator_weights: unknown operator(s) {sorted(unknown)} "
                         f"(known: {', '.join(OPERATORS)})")
    if any(weight < 0 for weight in weights.values()) or not any(weight > 0 for weight in weights.values()):
        raise ValueError(f"evolution operator_weights must be >= 0 with one positive, got {operator_weights!r}")
    return {name: weights[name] for name in OPERATORS if weights.get(name, 0.0) > 0}


def operator_order(weights: Mapping[str, float], rng: random.Random) -> list[str]:
    """The operators with positive weight in a weighted random order (drawn without replacement):
    the first is the one MMEvol draws; the others are tried when it cannot apply."""
    remaining = dict(weights)
    order = []
    while remaining:
        names = list(remaining)
        chosen = rng.choices(names, weights=[remaining[name] for name in names])[0]
        order.append(chosen)
        del remaining[chosen]
    return order


def content_key(row: Mapping[str, Any]) -> tuple:
    return (row.get("image_sha256"),
            tuple((turn["role"], normalise_text(turn["content"])) for turn in row.get("conversations") or []))


def default_vocabulary(objects_by_sha: Mapping[str, Sequence[SceneObject]],
                       categories: Sequence[str] | None = None) -> Vocabulary:
    """The vocabulary the annotations teacher draws from: the dataset's colours and its category
    names (default: the shapes its objects carry, sorted)."""
    if categories is None:
        categories = sorted({obj.shape for objects in objects_by_sha.values() for obj in objects})
    colours, shapes = questions.dataset_vocabulary(objects_by_sha, categories)
    return Vocabulary(colours=colours, shapes=shapes)


def _mean(values: Sequence[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


@dataclass
class Judgement:
    """A judge's verdict on a child against its direct parent (difficulties on 1..10)."""

    improved: bool
    difficulty_parent: float
    difficulty_child: float
    reason: str | None = None  # why not improved: answer_mismatch | no_gain | judge_low
    note: str | None = None  # an LLM judge's one-line reason


class Evolver(Protocol):
    """What a teacher implements to evolve its rows (the annotations teacher: `AnnotationEvolver`;
    the openai teacher: `teachers.openai_evolve.OpenAIEvolver`). Both methods take a whole round
    at once, so a remote teacher can send its requests concurrently."""

    backend: str

    def children(self, parents: Sequence[Mapping[str, Any]], orders: Sequence[Sequence[str]],
                 rngs: Sequence[random.Random], *, round: int) -> list[tuple[dict[str, Any] | None, str | None,
                                                                                list[str]]]:
        """Per parent: (its child or None, the operator that made it, the operators that could not apply).
        `orders[i]` is parent i's operators in the order to try them (the first is the one drawn)."""

    def judge(self, pairs: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]]) -> list[Judgement]:
        """Per (child, parent): whether the child improved on its parent."""

    def stats(self) -> dict[str, Any]:
        """What the teacher spent (requests, usage, parse failures), for the stage's metrics."""


class AnnotationEvolver:
    """The annotations teacher's evolution: programs on the images' objects, judged structurally."""

    backend = "annotations"

    def __init__(self, objects_by_sha: Mapping[str, Sequence[SceneObject]], *, vocabulary: Vocabulary | None = None,
                 answer_format: str = "letter", iteration: int | str = 0) -> None:
        self.objects_by_sha = objects_by_sha
        self.vocabulary = vocabulary or default_vocabulary(objects_by_sha)
        self.answer_format = answer_format
        self.iteration = iteration

    def children(self, parents, orders, rngs, *, round):
        made = []
        for parent, order, rng in zip(parents, orders, rngs):
            objects = self.objects_by_sha[parent["image_sha256"]]
            failed: list[str] = []
            for operator in order:
                child = evolve_row(parent, objects, rng, vocabulary=self.vocabulary, operator=operator,
                                   answer_format=self.answer_format, iteration=self.iteration, round=round)
                if child is not None:
                    made.append((child, operator, failed))
                    break
                failed.append(operator)
            else:
                made.append((None, None, failed))
        return made

    def judge(self, pairs):
        return [Judgement(*judge(child, parent, self.objects_by_sha[child["image_sha256"]])) for child, parent in pairs]

    def stats(self):
        return {}  # programs on annotations cost nothing to count


def evolvable(row: Mapping[str, Any], backend: str) -> bool:
    """Rows a backend evolves: the annotations teacher's need a question program; an LLM
    rewrites any row with a question and an answer."""
    if backend == "annotations":
        return row_program(row) is not None
    return bool(row.get("question")) and bool(row.get("answer")) and row.get("format") in ("mcq", "short")


def evolve(rows: Sequence[Mapping[str, Any]], evolver: Evolver, *, rounds: int,
           operator_weights: Mapping[str, float], seed: int,
           blind: Callable[[Sequence[Mapping[str, Any]]], list[tuple[bool, float | None]]] | None = None,
           progress: Callable[[str], None] | None = None,
           ) -> tuple[list[Verdict], list[dict[str, Any]], dict[str, Any]]:
    """`rounds` rounds of evolution: (every child with its verdict, the kept children, stats).

    Round r evolves each row that survived round r - 1 (the rows given, for round 1) once: its
    operator is drawn by `operator_weights`, the others are tried in a weighted order when it
    cannot apply, and a parent none applies to has no child. A child is kept when the evolver's
    judge says it improved on its direct parent, it repeats no row already seen on its image
    (else duplicate), and `blind` (when given: per child, whether the current model answers it from
    the question alone, and its probability of the right answer) does not flag it (else visually_independent); kept children seed the
    next round. Each parent draws from its own stream (`stable_hash(seed, round, parent id)`):
    the same inputs give the same outputs. Rows the evolver cannot rewrite are not evolved
    (stats `unevolvable`).
    """
    weights = check_weights(operator_weights)
    population = [dict(row) for row in rows if evolvable(row, evolver.backend)]
    seen = {content_key(row) for row in rows}
    verdicts: list[Verdict] = []
    kept: list[dict[str, Any]] = []
    stats: dict[str, Any] = {"backend": evolver.backend, "rows": len(rows),
                             "unevolvable": len(rows) - len(population),
                             "seed_mean_difficulty": _mean([difficulty(row) for row in population]),
                             "operator_weights": weights, "rounds": []}
    for round_number in range(1, int(rounds) + 1):
        rngs = [random.Random(stable_hash(seed, round_number, parent["sample_id"])) for parent in population]
        orders = [operator_order(weights, rng) for rng in rngs]
        made = evolver.children(population, orders, rngs, round=round_number)
        not_applicable = {name: 0 for name in weights}
        pairs, operators = [], []
        for parent, (child, operator, failed) in zip(population, made):
            for name in failed:
                not_applicable[name] += 1
            if child is not None:
                pairs.append((child, parent))
                operators.append(operator)
        judgements = evolver.judge(pairs)
        for (child, _), judgement in zip(pairs, judgements):
            child["kept"], child["reject_reason"] = judgement.improved, judgement.reason
            if judgement.improved and content_key(child) in seen:
                child["kept"], child["reject_reason"] = False, DUPLICATE
            if child["kept"]:
                seen.add(content_key(child))
        if blind is not None:
            candidates = [child for child, _ in pairs if child["kept"]]
            for child, (answered, probability) in zip(candidates, blind(candidates)):
                child["scores"]["visual_independence"] = probability
                if answered:
                    child["kept"], child["reject_reason"] = False, VISUALLY_INDEPENDENT
        round_verdicts: list[Verdict] = []
        for (child, parent), judgement, operator in zip(pairs, judgements, operators):
            child["scores"]["difficulty"] = judgement.difficulty_child
            child["scores"]["evolution_gain"] = round(
                max(0.0, judgement.difficulty_child - judgement.difficulty_parent) / (MAX_DIFFICULTY - MIN_DIFFICULTY), 4)
            if judgement.note:
                child["provenance"]["judge_note"] = judgement.note
            round_verdicts.append(Verdict(child, parent["sample_id"], operator, round_number,
                                          judgement.difficulty_parent, judgement.difficulty_child))
        survivors = [verdict.row for verdict in round_verdicts if verdict.kept]
        stats["rounds"].append(_round_stats(round_number, population, round_verdicts, not_applicable,
                                            len(population) - len(pairs)))
        if progress is not None:
            progress(f"round {round_number}: {len(pairs)} evolved from {len(population)}, {len(survivors)} kept")
        verdicts += round_verdicts
        kept += survivors
        population = survivors
    stats["evolved"] = len(verdicts)
    stats["kept"] = len(kept)
    stats["keep_rate"] = round(len(kept) / len(verdicts), 4) if verdicts else None
    return verdicts, kept, stats


def final_rows(rows: Sequence[Mapping[str, Any]], kept: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Each row replaced by its newest kept descendant (the row itself when none survived): as many
    rows as were given, so training sees the same number of samples with and without evolution."""
    newest: dict[str, dict[str, Any]] = {}
    root_of: dict[str, str] = {}
    for row in rows:
        root_of[row["sample_id"]] = row["sample_id"]
    for child in kept:  # in round order: a later descendant replaces an earlier one
        root = root_of[child["parent_ids"][0]]
        root_of[child["sample_id"]] = root
        newest[root] = child
    return [dict(newest.get(row["sample_id"], row)) for row in rows]


def _summary(verdicts: Sequence[Verdict]) -> dict[str, Any]:
    dropped: dict[str, int] = {}
    for verdict in verdicts:
        if not verdict.kept:
            dropped[verdict.reason] = dropped.get(verdict.reason, 0) + 1
    return {"evolved": len(verdicts), "kept": sum(1 for v in verdicts if v.kept),
            "dropped": {reason: dropped[reason] for reason in DROP_REASONS if reason in dropped},
            "mean_difficulty": {"evolved": _mean([v.difficulty_child for v in verdicts]),
                                "kept": _mean([v.difficulty_child for v in verdicts if v.kept])},
            "mean_gain_kept": _mean([v.difficulty_child - v.difficulty_parent for v in verdicts if v.kept])}


def _round_stats(round_number: int, parents: Sequence[Mapping[str, Any]], verdicts: Sequence[Verdict],
                 not_applicable: Mapping[str, int], no_operator: int) -> dict[str, Any]:
    entry: dict[str, Any] = {"round": round_number, "parents": len(parents),
                             "parents_mean_difficulty": _mean([difficulty(row) for row in parents]),
                             "no_operator_applies": no_operator, **_summary(verdicts), "operators": {}}
    for name in not_applicable:
        mine = [verdict for verdict in verdicts if verdict.operator == name]
        entry["operators"][name] = {**_summary(mine), "not_applicable": not_applicable[name]}
    return entry


# ---------------------------------------------------------------- the blind check

def blind_threshold(base_rate: float, margin: float) -> float:
    """The probability of the right option above which a blind answer is "far above chance":
    base_rate + margin * (1 - base_rate)."""
    return base_rate + margin * (1.0 - base_rate)


# Items with the same option set needed to estimate the model's blind base rate of an answer.
MIN_BASE_RATE_ITEMS = 20


def blind_answered(model, processor, rows: Sequence[Mapping[str, Any]], *, margin: float, answer_format: str,
                   batch_size: int, data_root: str = "data") -> list[tuple[bool, float | None]]:
    """Per row: (whether the model answers it right from the question alone, with the image
    replaced by a blank (mid-grey) one of the same size; its probability of the right option).
    (False, None) for a row without options: a short answer has nothing to score against.

    A row is answered blind when the model's pick is right and its probability of the right
    option (softmax of the option log-likelihoods) is at least `blind_threshold(base, margin)`.
    `base` is chance measured, not assumed: the model's mean blind probability of that same
    answer over the rows with the same options (at least MIN_BASE_RATE_ITEMS of them; else
    1/k). A blank image makes "no" true for "Is there a red circle?"; a model that says "no"
    to every blank image has not read the answer from the question, and is not counted."""
    import io as bytes_io
    from pathlib import Path

    from PIL import Image

    from mmloop.config import EvaluateConfig
    from mmloop.eval.evaluation import evaluate
    from mmloop.schema import OPTION_LETTERS

    blanks: dict[tuple[int, int], bytes] = {}
    items, positions = [], []
    for position, row in enumerate(rows):
        options = list(row.get("options") or [])
        if not 2 <= len(options) <= len(OPTION_LETTERS) or row["answer"] not in options:
            continue
        with Image.open(Path(data_root) / row["image"]) as handle:
            size = handle.size
        if size not in blanks:
            buffer = bytes_io.BytesIO()
            Image.new("RGB", size, (128, 128, 128)).save(buffer, format="PNG")
            blanks[size] = buffer.getvalue()
        items.append({"index": position, "question": row["question"], "options": options,
                      "answer": OPTION_LETTERS[options.index(row["answer"])], "image": blanks[size],
                      "image_sha256": f"blank-{size[0]}x{size[1]}"})
        positions.append(position)
    answered: list[tuple[bool, float | None]] = [(False, None)] * len(rows)
    if not items:
        return answered
    settings = EvaluateConfig(mode="loglik", batch_size=batch_size)
    predictions = evaluate(model, processor, items, settings, answer_format, benchmark="blind", model_name="blind",
                           iteration=0)
    for position, verdict in zip(positions, blind_verdicts(predictions, margin)):
        answered[position] = verdict
    return answered


def blind_verdicts(predictions: Sequence[Mapping[str, Any]], margin: float) -> list[tuple[bool, float]]:
    """(answered far above chance, probability of the right option) per blind prediction
    (prediction schema: options, answer letter, option_scores, correct); see `blind_answered`."""
    from mmloop.schema import OPTION_LETTERS

    probabilities = []
    rates: dict[tuple[str, ...], dict[str, list[float]]] = {}
    for prediction in predictions:
        scores = prediction["option_scores"]
        top = max(scores)
        weights = [math.exp(score - top) for score in scores]
        by_option = {option: weight / sum(weights) for option, weight in zip(prediction["options"], weights)}
        probabilities.append(by_option)
        group = rates.setdefault(tuple(sorted(prediction["options"])), {})
        for option, probability in by_option.items():
            group.setdefault(option, []).append(probability)
    verdicts = []
    for prediction, by_option in zip(predictions, probabilities):
        options = list(prediction["options"])
        right = options[OPTION_LETTERS.index(prediction["answer"])]
        seen = rates[tuple(sorted(options))][right]
        base = sum(seen) / len(seen) if len(seen) >= MIN_BASE_RATE_ITEMS else 1.0 / len(options)
        far_above = prediction["correct"] and by_option[right] >= blind_threshold(base, margin)
        verdicts.append((bool(far_above), round(by_option[right], 4)))
    return verdicts


# ---------------------------------------------------------------- the report

def round_table(stats: Mapping[str, Any]) -> str:
    """Markdown of an evolve stage's metrics: per round and operator, the children evolved and
    kept, the dropped ones by reason, and the mean difficulty of the parents and of the kept."""
    reasons = [reason for reason in DROP_REASONS
               if any(reason in entry["dropped"] for entry in stats["rounds"])]
    header = ["round", "operator", "parents", "evolved", "kept", *(f"dropped: {r}" for r in reasons),
              "difficulty of parents", "difficulty of kept"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def cell(value: Any) -> str:
        return "–" if value is None else f"{value:.2f}" if isinstance(value, float) else str(value)

    for entry in stats["rounds"]:
        rows = [("all", entry)] + [(name, values) for name, values in entry["operators"].items()]
        for name, values in rows:
            lines.append("| " + " | ".join(cell(value) for value in [
                entry["round"] if name == "all" else "", name, entry["parents"] if name == "all" else "",
                values["evolved"], values["kept"], *(values["dropped"].get(reason, 0) for reason in reasons),
                entry["parents_mean_difficulty"] if name == "all" else None,
                values["mean_difficulty"]["kept"]]) + " |")
    return "\n".join(lines)
