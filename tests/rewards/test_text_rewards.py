import pytest

from reward_fns import get_reward
from reward_fns.text_match import normalize_answer, token_f1

string_match = get_reward("string_match")
f1 = get_reward("f1")
max_length = get_reward("max_length")


@pytest.mark.parametrize(
    "completion,label,score",
    [
        ("The Eiffel Tower", "eiffel tower", 1.0),
        ("  Paris. ", "paris", 1.0),
        ("Paris", ["London", "Paris"], 1.0),
        ("Paris", '["London", "Paris"]', 1.0),
        ("\u201cParis\u201d", "Paris", 1.0),
        ("London", "Paris", 0.0),
        ("Paris, France", "Paris", 0.0),
        ("", "Paris", 0.0),
        ("<think>Paris</think>London", "Paris", 0.0),
    ],
)
def test_string_match(completion, label, score):
    assert string_match(completion, label).score == score


def test_normalize_answer():
    assert normalize_answer("The  Cat's   hat!") == "cat s hat"


@pytest.mark.parametrize(
    "completion,label,score",
    [
        ("the big red dog", "big red dog", 1.0),
        ("big dog", "big red dog", 0.8),
        ("cat", "big red dog", 0.0),
        ("red", ["blue", "red"], 1.0),
    ],
)
def test_f1(completion, label, score):
    assert f1(completion, label).score == pytest.approx(score)


def test_f1_empty_answers():
    assert token_f1("", "") == 1.0
    assert token_f1("a", "") == 1.0  # "a" is an article: both normalise to nothing
    assert token_f1("dog", "") == 0.0


@pytest.mark.parametrize(
    "completion,label,token_ids,score",
    [
        ("a b", 4, [1, 2, 3], 1.0),
        ("a b", 2, [1, 2, 3], 0.5),
        ("a b", 2, [1, 2, 3, 4, 5, 6], 0.0),
        ("a b c d e f", '{"max_length": 4, "unit": "words"}', None, 0.5),
        ("abcd", {"max_length": 4, "unit": "chars", "mode": "target"}, None, 1.0),
        ("abcdef", {"max_length": 4, "unit": "chars", "mode": "target"}, None, 0.5),
        ("ab", {"max_length": 4, "unit": "chars", "mode": "target"}, None, 0.5),
    ],
)
def test_max_length(completion, label, token_ids, score):
    assert max_length(completion, label, token_ids=token_ids).score == pytest.approx(score)


def test_max_length_without_token_ids_counts_words_and_says_so():
    result = max_length("one two three", 3)
    assert result.score == 1.0
    assert "no token_ids" in result.metadata["unit"]


@pytest.mark.parametrize("label", [0, -3, "abc", {"max_length": 5, "unit": "lines"}, True])
def test_max_length_bad_labels(label):
    with pytest.raises(ValueError):
        max_length("x", label)
