"""How an item becomes what the model is asked: the user turn (a `PromptConvention`), the
replies that name each candidate, and the earlier turns of a multi-round conversation.

Each item becomes one user turn rendered by the processor's chat template with the
generation prompt, the image in the first user turn. The text follows the benchmark's
`PromptConvention` (each benchmark module under `mmloop.eval.benchmarks` names its own):
for mcq the MMBench prompt (hint, question, "Options:", lettered options, "Answer with the
option's letter ..."), for yes_no the question plus "Answer the question using a single word
or phrase." The default convention gives exactly `questions.mcq_prompt`, which the tiny model
was trained on.

Multiple rounds ("COCO is ALL you need": a question asked late in a conversation is harder
than the same question asked first): the scored question follows k earlier (user, assistant)
turns about the same image, either other items on that image answered correctly
(`same_image_rounds`) or fixed instructions of another answer format (GENERIC_INSTRUCTIONS)
that the model answers itself. A row's `prompt` holds them (`recorded_prompt`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from mmloop.eval.items import is_missing, normalise_item
from mmloop.questions import CAPTION_QUESTION, MCQ_SUFFIX, MCQ_SUFFIXES, YES_NO, check_answer_format
from mmloop.schema import OPTION_LETTERS

SHORT_SUFFIX = "Answer the question using a single word or phrase."
# How the evaluation harnesses (VLMEvalKit, lmms-eval) have a multiple-choice reply name its
# choice; `mmloop eval` uses it where no params.yaml says otherwise.
HARNESS_ANSWER_FORMAT = "letter"
# The assistant reply that says yes / no: hub models answer "Yes"; the tiny model (answer_format
# "option") was trained on existence questions whose options are "yes"/"no".
YES_NO_REPLIES = {"letter": ("Yes", "No"), "option": YES_NO}
# Generic earlier turns: an answer format other than the benchmark's (sentences, not a letter),
# so the model has to switch formats for the scored question.
GENERIC_INSTRUCTIONS = (
    CAPTION_QUESTION,
    "What is the main object in the image? Answer in a full sentence.",
    "How many objects are in the image? Answer in a full sentence.",
    "Which colours can you see in the image? Answer in a full sentence.",
    "Where is the largest object in the image? Answer in a full sentence.",
    "Write a short caption for the image.",
)


@dataclasses.dataclass(frozen=True)
class PromptConvention:
    """How an item becomes its user turn, as one evaluation harness writes it.

    - mcq_suffix: the last line of a multiple-choice turn (answer_format "letter"; with
      "option" it is `questions.MCQ_SUFFIXES["option"]`, what the tiny model was trained on);
    - short_suffix: the last line of a free-form short-answer turn;
    - yes_no_suffix: the last line of a yes/no turn;
    - hint_first: the "Hint: ..." line before the question (else after it);
    - options_header: an "Options:" line before the lettered options (VLMEvalKit; LLaVA,
      lmms-eval's SEED-Bench and LLaVA's A-OKVQA list the options right after the question);
    - strip_from_question: phrases removed from the question first (MME's own "Please answer
      yes or no.", which lmms-eval replaces by the yes/no suffix).
    An empty suffix adds no line.
    """

    name: str = "default"
    mcq_suffix: str = MCQ_SUFFIX
    short_suffix: str = SHORT_SUFFIX
    yes_no_suffix: str = SHORT_SUFFIX
    hint_first: bool = True
    options_header: bool = True
    strip_from_question: tuple[str, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "strip_from_question", tuple(self.strip_from_question))

    def as_dict(self) -> dict[str, Any]:
        """The fields as plain JSON values (for the metrics file)."""
        values = dataclasses.asdict(self)
        values["strip_from_question"] = list(self.strip_from_question)
        return values

    def mcq(self, question: str, options: Sequence[str], hint: str | None = None,
            answer_format: str = "letter") -> str:
        lines = self._lead(question, hint)
        if self.options_header:
            lines.append("Options:")
        lines += [f"{OPTION_LETTERS[position]}. {option}" for position, option in enumerate(options)]
        suffix = self.mcq_suffix if check_answer_format(answer_format) == "letter" else MCQ_SUFFIXES["option"]
        return "\n".join(lines + ([suffix] if suffix else []))

    def yes_no(self, question: str, hint: str | None = None) -> str:
        return "\n".join(self._lead(question, hint) + ([self.yes_no_suffix] if self.yes_no_suffix else []))

    def short(self, question: str, hint: str | None = None) -> str:
        return "\n".join(self._lead(question, hint) + ([self.short_suffix] if self.short_suffix else []))

    def suffixes(self) -> tuple[str, ...]:
        """Every non-empty last line this convention's turns can end with (before the reply)."""
        lines = dict.fromkeys([*MCQ_SUFFIXES.values(), self.mcq_suffix, self.yes_no_suffix])
        return tuple(line for line in lines if line)

    def _lead(self, question: str, hint: str | None) -> list[str]:
        for phrase in self.strip_from_question:
            if phrase in question:
                question = question.replace(phrase, "").strip()
        hints = [f"Hint: {hint}"] if hint else []
        return [*hints, question] if self.hint_first else [question, *hints]


DEFAULT_CONVENTION = PromptConvention()


def user_prompt(item: Mapping[str, Any], answer_format: str = "letter",
                convention: PromptConvention = DEFAULT_CONVENTION) -> str:
    """The item's user turn under `convention` (default: `questions.mcq_prompt`'s text)."""
    hint = None if is_missing(item.get("hint")) else item.get("hint")
    if item.get("answer_type", "mcq") == "yes_no":
        return convention.yes_no(item["question"], hint)
    return convention.mcq(item["question"], item["options"], hint, answer_format)


def option_replies(item: Mapping[str, Any], answer_format: str = "letter") -> list[str]:
    """The assistant reply that picks each candidate: the option's letter or text, or Yes / No."""
    if item.get("answer_type", "mcq") == "yes_no":
        return list(YES_NO_REPLIES[check_answer_format(answer_format)])
    if check_answer_format(answer_format) == "option":
        return list(item["options"])
    # By position, not `mcq_reply`'s text lookup: two options with the same text keep their letters.
    return list(OPTION_LETTERS[:len(item["options"])])


def correct_reply(item: Mapping[str, Any], answer_format: str = "letter") -> str:
    """The reply that gives the item's correct answer."""
    replies = option_replies(item, answer_format)
    if item.get("answer_type", "mcq") == "yes_no":
        return replies[YES_NO.index(str(item["answer"]).strip().lower())]
    return replies[OPTION_LETTERS.index(item["answer"])]


def recorded_prompt(history: Sequence[tuple[str, str]], user: str) -> str:
    """A row's `prompt`: the scored user turn; after earlier turns, those turns first as
    "USER: ...\\nASSISTANT: ..." lines and the scored one as "USER: ...", so the context the
    model saw (its own generic replies included) is on record."""
    if not history:
        return user
    return "\n".join([*(f"USER: {asked}\nASSISTANT: {answered}" for asked, answered in history), f"USER: {user}"])


def conversation(history: Sequence[tuple[str, str]], user: str) -> list[dict[str, str]]:
    """The earlier (user, assistant) turns and then the user turn, as chat messages."""
    turns = []
    for asked, answered in history:
        turns += [{"role": "user", "content": asked}, {"role": "assistant", "content": answered}]
    return turns + [{"role": "user", "content": user}]


def chat_texts(processor, conversations: Sequence[Sequence[Mapping[str, str]]]) -> list[str]:
    """Chat-template texts with the generation prompt; the image in each first user turn."""
    from mmloop.models.chat import messages

    return list(processor.apply_chat_template([messages(turns) for turns in conversations],
                                              add_generation_prompt=True, tokenize=False))


def prompt_texts(processor, items: Sequence[Mapping[str, Any]], answer_format: str = "letter",
                 convention: PromptConvention = DEFAULT_CONVENTION) -> list[str]:
    """The chat-template text of each item's (single-round) user turn plus the generation prompt."""
    return chat_texts(processor, [conversation([], user_prompt(item, answer_format, convention)) for item in items])


def same_image_rounds(items: Sequence[Mapping[str, Any]], rounds: int, *, answer_format: str = "letter",
                      convention: PromptConvention = DEFAULT_CONVENTION) -> list[list[tuple[str, str]]]:
    """For each item, up to `rounds` earlier (user, assistant) turns: other items on the same
    image, asked under the same convention and answered correctly. They are the image's other
    items in input order, starting after the scored one and wrapping around (so the contexts
    vary), without the item's own group (its circular copies / MME pair) or any item asking the
    same question, either of which would give the answer away."""
    items = [normalise_item(item, position) for position, item in enumerate(items)]
    by_image: dict[str, list[int]] = {}
    for position, item in enumerate(items):
        by_image.setdefault(item["image_sha256"], []).append(position)
    turns = [(user_prompt(item, answer_format, convention), correct_reply(item, answer_format)) for item in items]
    histories = []
    for position, item in enumerate(items):
        same = by_image[item["image_sha256"]]
        at = same.index(position)
        order = same[at + 1:] + same[:at]
        chosen = [other for other in order
                  if (item["group"] is None or items[other]["group"] != item["group"])
                  and items[other]["question"] != item["question"]][:max(0, int(rounds))]
        histories.append([turns[other] for other in chosen])
    return histories
