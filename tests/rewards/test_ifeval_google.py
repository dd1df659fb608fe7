"""The 25 IFEval instruction ids (Google's semantics and kwarg spellings): a passing and a failing
response each, plus the label shapes the datasets use and the fraction scoring."""

import json

import pytest

from reward_fns import get_reward
from reward_fns.ifeval import INSTRUCTIONS

ifeval = get_reward("ifeval")
ifeval_loose = get_reward("ifeval_loose")

ENGLISH = "The quick brown fox jumps over the lazy dog while the farmer watches from the field."

# id -> (kwargs, passing response, failing response)
CASES = {
    "keywords:existence": ({"keywords": ["sun", "Moon"]}, "Sunlight and the MOON.", "Only the sun."),
    "keywords:frequency": (
        {"keyword": "cat", "frequency": 3, "relation": "at least"},
        "cat catalog concat",
        "cat cat",
    ),
    "keywords:forbidden_words": ({"forbidden_words": ["car"]}, "A scary carriage.", "My Car is red."),
    "keywords:letter_frequency": (
        {"letter": "q", "let_frequency": 2, "let_relation": "less than"},
        "Quiet please.",
        "Quick quiz quality.",
    ),
    "language:response_language": (
        {"language": "fr"},
        "Le renard brun rapide saute par-dessus le chien paresseux dans le champ.",
        ENGLISH,
    ),
    "length_constraints:number_sentences": (
        {"num_sentences": 3, "relation": "less than"},
        "One. Two.",
        "One. Two. Three.",
    ),
    "length_constraints:number_paragraphs": (
        {"num_paragraphs": 2},
        "First.\n***\nSecond.",
        "First.\n***\n***\nSecond.",
    ),
    "length_constraints:number_words": (
        {"num_words": 4, "relation": "at least"},
        "one two three four",
        "one two three",
    ),
    "length_constraints:nth_paragraph_first_word": (
        {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "Then"},
        'First part.\n\n"Then, second part.',
        "First part.\n\nAfter that, second part.",
    ),
    "detectable_content:number_placeholders": (
        {"num_placeholders": 2},
        "At [place] on [date].",
        "At [place].",
    ),
    "detectable_content:postscript": ({"postscript_marker": "P.S."}, "Bye.\np.s. call me", "Bye. PS call me"),
    "detectable_format:number_bullet_lists": ({"num_bullets": 2}, "* one\n* two", "* one\n* two\n- three"),
    "detectable_format:constrained_response": ({}, "My answer is maybe.", "Maybe."),
    "detectable_format:number_highlighted_sections": (
        {"num_highlights": 2},
        "*one* and **two**",
        "*one* and **",
    ),
    "detectable_format:multiple_sections": (
        {"section_spliter": "SECTION", "num_sections": 2},
        "SECTION 1\na\nSECTION 2\nb",
        "SECTION 1\na",
    ),
    "detectable_format:json_format": ({}, '```json\n{"a": 1}\n```', "{a: 1}"),
    "detectable_format:title": ({}, "<<A Title>>\ntext", "<< >>\ntext"),
    "combination:two_responses": ({}, "Answer one.\n******\nAnswer two.", "Answer one.\n******\nAnswer one."),
    "combination:repeat_prompt": (
        {"prompt_to_repeat": "Tell me a joke."},
        "tell me a joke. Why did...",
        "Why did the chicken...",
    ),
    "startend:end_checker": ({"end_phrase": "That is all."}, 'Done. THAT IS ALL."', "That is all. Done."),
    "change_case:capital_word_frequency": (
        {"capital_frequency": 2, "capital_relation": "less than"},
        "Only ONE capital word.",
        "TWO CAPITAL words.",
    ),
    "change_case:english_capital": ({}, ENGLISH.upper(), ENGLISH),
    "change_case:english_lowercase": ({}, ENGLISH.lower(), ENGLISH),
    "punctuation:no_comma": ({}, "No commas.", "One, two."),
    "startend:quotation": ({}, '"Quoted."', "Not quoted."),
}


def ids_label(pairs):
    return json.dumps({"instruction_id": [p[0] for p in pairs], "kwargs": [p[1] for p in pairs]})


def test_all_25_ids_are_covered():
    assert len(INSTRUCTIONS) == 25
    assert set(CASES) == set(INSTRUCTIONS)


@pytest.mark.parametrize("iid", sorted(CASES))
def test_instruction_pass_and_fail(iid):
    kwargs, good, bad = CASES[iid]
    gt = ids_label([(iid, kwargs)])
    assert ifeval(good, gt).score == 1.0, good
    assert ifeval(bad, gt).score == 0.0, bad


def test_fraction_of_constraints():
    gt = ids_label(
        [("punctuation:no_comma", {}), ("startend:quotation", {}), ("change_case:english_lowercase", {})]
    )
    result = ifeval('"no commas, but quoted"', gt)
    assert result.score == pytest.approx(2 / 3)
    assert result.metadata["followed"] == [False, True, True]


def test_label_shapes_list_and_python_repr_and_nulls():
    obj = {
        "instruction_id": ["punctuation:no_comma", "keywords:existence"],
        "kwargs": [{"keywords": None}, {"keywords": ["tea"], "num_words": None}],
    }
    for gt in (obj, [obj], json.dumps([obj]), repr(obj), repr([obj])):
        assert ifeval("green tea", gt).score == 1.0, gt
        assert ifeval("green, tea", gt).score == 0.5, gt


def test_ids_without_kwargs_key():
    assert ifeval("fine", {"instruction_id": ["punctuation:no_comma"]}).score == 1.0


def test_mismatched_kwargs_length_is_an_error():
    with pytest.raises(ValueError, match="kwargs"):
        ifeval("x", {"instruction_id": ["punctuation:no_comma", "startend:quotation"], "kwargs": [{}]})


def test_unknown_instruction_id_is_an_error():
    with pytest.raises(ValueError, match="unknown IFEval instruction id"):
        ifeval("x", {"instruction_id": ["keywords:nonsense"], "kwargs": [{}]})


def test_keyword_regex_characters_are_literal():
    gt = ids_label([("keywords:existence", {"keywords": ["c++"]})])
    assert ifeval("I like C++ a lot", gt).score == 1.0
    assert ifeval("I like C a lot", gt).score == 0.0


def test_no_letters_is_not_in_any_language():
    gt = ids_label([("language:response_language", {"language": "en"})])
    assert ifeval("12345 !!!", gt).score == 0.0


def test_empty_response_follows_nothing():
    gt = ids_label([("punctuation:no_comma", {})])
    assert ifeval("", gt).score == 0.0
    assert ifeval("   ", gt).score == 0.0


def test_loose_mode_forgives_first_line_and_asterisks():
    gt = ids_label([("startend:quotation", {})])
    text = 'Sure, here it is:\n"The answer."'
    assert ifeval(text, gt).score == 0.0
    assert ifeval_loose(text, gt).score == 1.0
    gt2 = ids_label([("detectable_format:json_format", {})])
    assert ifeval_loose('Here you go:\n{"a": 1}', gt2).score == 1.0


def test_sentence_counting_without_nltk():
    from reward_fns.ifeval.text_units import count_sentences

    assert count_sentences("Dr. Smith arrived. He was late! Was he? Yes... he was.") == 4
    assert count_sentences("Pi is 3.14 roughly. J. R. R. Tolkien wrote books.") == 2
    assert count_sentences("") == 0


def test_language_detection_is_deterministic():
    from reward_fns.ifeval.text_units import detect_language

    detect_language.cache_clear()
    first = [detect_language("Das ist ein kurzer Satz auf Deutsch, glaube ich.") for _ in range(3)]
    detect_language.cache_clear()
    assert first == [detect_language("Das ist ein kurzer Satz auf Deutsch, glaube ich.")] * 3
