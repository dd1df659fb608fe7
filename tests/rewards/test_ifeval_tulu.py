"""The 25 Tülu 3 IF functions: a passing and a failing response each, through the `ifeval` reward with
the label exactly as the RLVR data stores it (a JSON string, every argument key present, unused ones
null)."""

import json

import pytest

from reward_fns import get_reward
from reward_fns.ifeval import FUNCTIONS

ifeval = get_reward("ifeval")

_NULLS = {
    "N": None,
    "quantifier": None,
    "keyword_list": None,
    "word": None,
    "letter": None,
    "end_phrase": None,
    "forbidden_words": None,
    "postscript_marker": None,
}


def label(func_name, **kwargs):
    return json.dumps({"func_name": func_name, **_NULLS, **kwargs})


ENGLISH = "The quick brown fox jumps over the lazy dog while the farmer watches from the field."

# func_name -> (label kwargs, passing response, failing response)
CASES = {
    "verify_keywords": (
        {"keyword_list": ["apple", "Orange"]},
        "An APPLE and an orange.",
        "An apple and a pear.",
    ),
    "verify_keyword_frequency": ({"word": "cat", "N": 2}, "The cat saw another cat. Cats!", "The cat sat."),
    "validate_forbidden_words": (
        {"forbidden_words": ["car", "bus"]},
        "A scary carriage ride.",
        "I took the Bus.",
    ),
    "verify_letter_frequency": ({"letter": "z", "N": 3}, "Zig zag zoo", "zig zag"),
    "validate_response_language": (
        {"language": "en"},
        ENGLISH,
        "Le renard brun rapide saute par-dessus le chien paresseux dans le champ.",
    ),
    "verify_paragraph_count": ({"N": 3}, "One.\n* * *\nTwo.\n* * *\nThree.", "One.\n* * *\n* * *\nThree."),
    "validate_word_constraint": ({"N": 5, "quantifier": "at least"}, "one two three four five", "one two"),
    "verify_sentence_constraint": ({"N": 2, "quantifier": "at most"}, "One. Two.", "One. Two. Three."),
    "validate_paragraphs": (
        {"N": 2, "first_word": "second", "i": 2},
        "First para.\n\nSecond para here.",
        "First para.\n\nThird para here.",
    ),
    "verify_postscript": ({"postscript_marker": "P.S."}, "Hello.\n\nP.S. See you soon.", "Hello. P.S."),
    "validate_placeholders": ({"N": 2}, "Send it to [name] at [address].", "Send it to [name]."),
    "verify_bullet_points": ({"N": 2}, "Intro\n* first\n- second", "Intro\n* first\n* second\n* third"),
    "validate_title": ({}, "<<My Poem>>\nRoses are red.", "My Poem\nRoses are red."),
    "validate_choice": (
        {"options": "('My answer is yes.', 'My answer is no.', 'My answer is maybe.')"},
        "I think so. My answer is yes.",
        "Yes, definitely.",
    ),
    "validate_highlighted_sections": ({"N": 2}, "This is *important* and *urgent*.", "This is *important*."),
    "validate_sections": (
        {"N": 2, "section_splitter": "Section"},
        "Section 1\nIntro.\nSection 2\nBody.",
        "Preamble.\nSection 1\nIntro.\nSection 2\nBody.",
    ),
    "validate_json_format": ({}, '{"a": [1, 2], "b": null}', "{'a': 1}"),
    "validate_repeat_prompt": (
        {"original_prompt": "Write a haiku about rain."},
        "Write a haiku about rain. Soft drops on the roof.",
        "A haiku about rain: soft drops on the roof.",
    ),
    "validate_two_responses": ({}, "First answer.\n******\nSecond answer.", "Same.\n******\nSame."),
    "validate_uppercase": ({}, "ALL CAPS HERE, 100%!", "ALL CAPS except this"),
    "validate_lowercase": ({}, "all lower case, 100%.", "Not all lower case."),
    "validate_frequency_capital_words": (
        {"N": 2, "quantifier": "at least"},
        "The NASA and FBI teams.",
        "The Nasa team.",
    ),
    "validate_end": (
        {"end_phrase": "Any other questions?"},
        "Done here. Any other questions?  \n",
        "Any other questions? Done here.",
    ),
    "validate_quotation": ({}, '  "Wrapped in quotes."  ', '"Only starts with a quote.'),
    "validate_no_commas": ({}, "No commas here.", "Well, a comma."),
}


def test_all_25_functions_are_covered():
    assert len(FUNCTIONS) == 25
    assert set(CASES) == set(FUNCTIONS)


@pytest.mark.parametrize("func_name", sorted(CASES))
def test_function_pass_and_fail(func_name):
    kwargs, good, bad = CASES[func_name]
    gt = label(func_name, **kwargs)
    assert ifeval(good, gt).score == 1.0, good
    assert ifeval(bad, gt).score == 0.0, bad


def test_null_arguments_are_ignored_and_extra_keys_do_not_leak():
    gt = label("validate_no_commas", N=None, keyword_list=None)
    assert ifeval("fine", gt).score == 1.0


@pytest.mark.parametrize(
    "quantifier,count,ok",
    [
        ("at least", 10, True),
        ("at least", 9, False),
        ("at most", 10, True),
        ("at most", 11, False),
        ("around", 11, True),
        ("around", 9, True),
        ("around", 12, False),
    ],
)
def test_word_quantifiers(quantifier, count, ok):
    gt = label("validate_word_constraint", N=10, quantifier=quantifier)
    assert ifeval(" ".join(["w"] * count), gt).score == float(ok)


def test_missing_required_argument_raises_one_line_value_error():
    with pytest.raises(ValueError, match="end_phrase"):
        ifeval("text", label("validate_end"))


def test_unknown_func_name_raises():
    with pytest.raises(ValueError, match="unknown"):
        ifeval("text", label("validate_nonsense"))


def test_repeat_prompt_falls_back_to_the_row_prompt():
    gt = label("validate_repeat_prompt")
    assert ifeval("Say hi. Hi!", gt, prompt="Say hi.").score == 1.0
    assert ifeval("Hi!", gt, prompt="Say hi.").score == 0.0


def test_dict_label_and_keyword_list_repr_string():
    gt = {"func_name": "verify_keywords", "keyword_list": "['sun', 'moon']"}
    assert ifeval("the sun and the moon", gt).score == 1.0
    assert ifeval("the sun", gt).score == 0.0


def test_bullet_dividers_are_not_bullets():
    gt = label("verify_bullet_points", N=2)
    assert ifeval("* a\n* b\n* * *\n---", gt).score == 1.0


def test_thinking_is_not_scored():
    gt = label("validate_no_commas")
    assert ifeval("<think>a, b, c</think>No commas.", gt).score == 1.0
    assert ifeval("<think>still thinking", gt).score == 0.0
