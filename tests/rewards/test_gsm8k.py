import pytest

from reward_fns import get_reward
from reward_fns.gsm8k import last_number

gsm8k = get_reward("gsm8k")


@pytest.mark.parametrize(
    "completion,label",
    [
        ("48 + 24 = 72. The answer is 72.", "72"),
        ("The answer is $1,234.", "1234"),
        ("She pays $1,234.", "1,234"),
        ("Total: 1,234.00", "1234"),
        ("It comes to 1,234,567 dollars", "1234567"),
        ("The balance is -5.", "-5"),
        ("The balance is \u22125", "-5"),
        ("so it is 3.50 dollars", "3.5"),
        ("#### 18", "#### 18"),
        ("the answer: 72", 72),
        ("the answer: 72", 72.0),
        ("Answer: 10", "$10"),
        ("First 12, then 7, so 19", "19"),
        ("<think>It is 5.</think>So 72.", "72"),
    ],
)
def test_correct(completion, label):
    assert gsm8k(completion, label).score == 1.0


@pytest.mark.parametrize(
    "completion,label",
    [
        ("The answer is 71.", "72"),
        ("It is 72 apples, minus 5 eaten, so 67.", "72"),
        ("I don't know", "72"),
        ("", "72"),
        ("pages 3-5", "-5"),
        ("1,2,3", "123"),
        ("<think>The answer is 72", "72"),
        ("<think>72</think> no idea", "72"),
        ("72.5", "72"),
    ],
)
def test_incorrect(completion, label):
    assert gsm8k(completion, label).score == 0.0


def test_last_number_details():
    assert last_number("$1,234.") == "1234"
    assert last_number("x-5") == "5"
    assert last_number("(-5)") == "-5"
    assert last_number("nothing") is None


def test_label_without_a_number_is_an_error():
    with pytest.raises(ValueError, match="no number"):
        gsm8k("42", "forty-two")
