"""Answer extraction from generated text, the way VLMEvalKit / lmms-eval do it.

Multiple choice (`extract_choice`), steps in order; the first that gives one answer wins,
the step's name is returned with it (the prediction schema's `extracted_by`):

1. "letter": one valid option letter (A.. for the number of options) standing as its own
   token; tokens are the runs of letters and digits. An upper-case letter counts anywhere
   ("B", "Answer: B", "The answer is (B).", "B. red"); a lower-case letter only when it is
   the whole answer give or take punctuation ("b", "(b)", "b."), so the article in
   "a red circle" is not option A. A letter inside a word ("Bravo", "cab") never counts.
   Two or more different letters ("A or B") make the step fail. Known limit: a sentence
   starting with the article "A" ("A red circle.") reads as option A, as in VLMEvalKit's
   letter matching.
2. "option_text": the option texts that occur in the answer, compared case-insensitively
   on word boundaries after turning punctuation into spaces and collapsing whitespace
   ("The answer is red." -> the option "red"). An option whose every occurrence lies inside
   the occurrence of a longer matched option does not count ("dark red" matches "dark red",
   not "red"). Exactly one option left -> its letter; more than one -> the step fails.
3. "judge": only when a `judge(question, options, text) -> str | None` is given: the letter
   it returns, if valid.
4. ("none", "none").

Yes/no (`extract_yes_no`) follows VLMEvalKit's `YOrN_Extraction` (vlmeval/dataset/utils/
yorn.py): the answer is lower-cased and split into words (runs of letters, so "notice",
"yesterday", "nonsense" and "Noah" are no match); "yes" as a word and no "no" -> "yes";
"no" and no "yes" -> "no"; both or neither -> the judge, else "none". (lmms-eval's POPE task
compares the whole lower-cased output with the answer, and LLaVA's eval_pope reads anything
without "no"/"not" as "yes", which would turn a refusal into "yes"; VLMEvalKit's rule keeps
refusals and hedges out.)
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from mmloop.questions import YES_NO
from mmloop.schema import OPTION_LETTERS

Judge = Callable[[str | None, Sequence[str], str], str | None]
NONE = ("none", "none")


def extract_choice(text: str | None, options: Sequence[str], *, judge: Judge | None = None,
                   question: str | None = None) -> tuple[str, str]:
    """(prediction letter or "none", step) for a generated answer to a multiple-choice item."""
    text = text or ""
    letters = OPTION_LETTERS[:len(options)]
    found = _letter(text, letters)
    if found:
        return found, "letter"
    found = _option_text(text, options)
    if found:
        return found, "option_text"
    if judge is not None:
        verdict = judge(question, list(options), text)
        verdict = verdict.strip().upper() if isinstance(verdict, str) else ""
        if len(verdict) == 1 and verdict in letters:
            return verdict, "judge"
    return NONE


def extract_yes_no(text: str | None, *, judge: Judge | None = None,
                   question: str | None = None) -> tuple[str, str]:
    """("yes" | "no", "yes_no"), the judge's verdict, or ("none", "none")."""
    text = text or ""
    words = set(re.findall(r"[a-z]+", text.lower()))
    if ("yes" in words) != ("no" in words):
        return ("yes" if "yes" in words else "no"), "yes_no"
    if judge is not None:
        verdict = judge(question, list(YES_NO), text)
        verdict = verdict.strip().lower() if isinstance(verdict, str) else ""
        if verdict in YES_NO:
            return verdict, "judge"
    return NONE


def _letter(text: str, letters: str) -> str | None:
    alone = re.fullmatch(r"[^A-Za-z0-9]*([A-Za-z])[^A-Za-z0-9]*", text)
    if alone:
        token = alone.group(1).upper()
        return token if token in letters else None
    found = {token for token in re.findall(r"[A-Za-z0-9]+", text) if len(token) == 1 and token in letters}
    return found.pop() if len(found) == 1 else None


def _normalise(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text.lower()).split())


def _spans(needle: str, haystack: str) -> list[tuple[int, int]]:
    """Word-bounded occurrences of `needle` in `haystack` (both normalised)."""
    return [(m.start(), m.start() + len(needle))
            for m in re.finditer(rf"(?<![a-z0-9]){re.escape(needle)}(?![a-z0-9])", haystack)]


def _option_text(text: str, options: Sequence[str]) -> str | None:
    answer = _normalise(text)
    spans = {}
    for position, option in enumerate(options):
        needle = _normalise(option or "")
        found = _spans(needle, answer) if needle else []
        if found:
            spans[position] = (needle, found)

    def covered(position: int) -> bool:
        needle, own = spans[position]
        longer = [span for other, (other_text, found) in spans.items()
                  if other != position and len(other_text) > len(needle) for span in found]
        return all(any(start <= s and e <= end for start, end in longer) for s, e in own)

    left = [position for position in spans if not covered(position)]
    return OPTION_LETTERS[left[0]] if len(left) == 1 else None
