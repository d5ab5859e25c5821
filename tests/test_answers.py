"""Answer extraction from generated text: letters, option texts, yes/no, the judge hook."""

import pytest

from mmloop.eval.answers import extract_choice, extract_yes_no

OPTIONS = ["red", "blue", "green", "dark red"]


@pytest.mark.parametrize("text, letter", [
    ("B", "B"), ("B.", "B"), ("(b)", "B"), ("b)", "B"), ("b", "B"), (" c. ", "C"),
    ("Answer: B", "B"), ("The answer is (B).", "B"), ("B. blue", "B"), ("**D**", "D"),
    ("I think the answer is C, green.", "C"),
])
def test_a_single_letter_is_the_answer(text, letter):
    assert extract_choice(text, OPTIONS) == (letter, "letter")


@pytest.mark.parametrize("text", ["E", "(e)", "The answer is E."])
def test_a_letter_past_the_options_is_not_an_answer(text):
    assert extract_choice(text, OPTIONS) == ("none", "none")


def test_a_letter_inside_a_word_does_not_count():
    options = ["cab", "bus"]
    assert extract_choice("cab", options) == ("A", "option_text")
    assert extract_choice("Bravo", ["x", "y"]) == ("none", "none")


def test_lower_case_letters_count_only_as_the_whole_answer():
    # The article "a" is not option A; the option text decides.
    assert extract_choice("a red circle", ["blue", "red"]) == ("B", "option_text")
    assert extract_choice("the answer is b", ["blue", "red"]) == ("none", "none")


def test_two_different_letters_are_ambiguous():
    assert extract_choice("A or B", OPTIONS) == ("none", "none")
    # ... but the same letter twice is one answer.
    assert extract_choice("B. The answer is B.", OPTIONS) == ("B", "letter")


def test_an_echoed_option_text():
    assert extract_choice("The answer is red.", OPTIONS) == ("A", "option_text")
    assert extract_choice("It is GREEN!", OPTIONS) == ("C", "option_text")
    assert extract_choice("it is greenish", OPTIONS) == ("none", "none")  # word boundaries


def test_a_longer_option_text_wins_over_its_substrings():
    assert extract_choice("The circle is dark red.", OPTIONS) == ("D", "option_text")
    # "red" also occurs on its own: ambiguous.
    assert extract_choice("red, or maybe dark red", OPTIONS) == ("none", "none")
    assert extract_choice("red or blue", OPTIONS) == ("none", "none")


def test_option_texts_are_normalised():
    options = ["a  traffic-light", "a stop sign"]
    assert extract_choice("I see a traffic light.", options) == ("A", "option_text")


def test_a_refusal_is_none():
    assert extract_choice("I cannot answer that.", OPTIONS) == ("none", "none")
    assert extract_choice("", OPTIONS) == ("none", "none")
    assert extract_choice(None, OPTIONS) == ("none", "none")


def test_the_judge_is_asked_last_and_only_when_given():
    calls = []

    def judge(question, options, text):
        calls.append((question, options, text))
        return " c "

    assert extract_choice("B", OPTIONS, judge=judge) == ("B", "letter")
    assert calls == []
    assert extract_choice("hmm, hard to say", OPTIONS, judge=judge, question="Colour?") == ("C", "judge")
    assert calls == [("Colour?", OPTIONS, "hmm, hard to say")]
    assert extract_choice("hmm", OPTIONS, judge=lambda *_: "Z") == ("none", "none")
    assert extract_choice("hmm", OPTIONS, judge=lambda *_: None) == ("none", "none")


@pytest.mark.parametrize("text, answer", [
    ("Yes.", "yes"), ("yes, there is", "yes"), ("No, there isn't.", "no"), ("NO", "no"),
    ("Yes, I can see a notice on the wall.", "yes"), ("No. Noah is not there.", "no"),
])
def test_yes_no_words(text, answer):
    assert extract_yes_no(text) == (answer, "yes_no")


@pytest.mark.parametrize("text", [
    "I notice a dog.", "yesterday", "nonsense", "Noah", "I cannot tell.", "Yes and no.", "", None,
])
def test_yes_no_needs_exactly_one_of_the_words(text):
    assert extract_yes_no(text) == ("none", "none")


def test_yes_no_judge():
    assert extract_yes_no("There is a notice.", judge=lambda q, o, t: "No", question="Is there?") == ("no", "judge")
    assert extract_yes_no("unclear", judge=lambda q, o, t: "maybe") == ("none", "none")
    seen = []
    extract_yes_no("unclear", judge=lambda q, o, t: seen.append(o), question="Q")
    assert seen == [["yes", "no"]]


def test_yes_no_is_defined_once():
    from mmloop import questions
    from mmloop.eval import answers, items, prompts
    from mmloop.eval.benchmarks import records

    assert answers.YES_NO is items.YES_NO is prompts.YES_NO is records.YES_NO is questions.YES_NO
    assert prompts.YES_NO_REPLIES["option"] is questions.YES_NO
