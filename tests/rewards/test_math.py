import pytest

from reward_fns import get_reward
from reward_fns.math_extract import extract_math_answer, last_boxed, minerva_answer
from reward_fns.math_normalize import fast_equal, normalize_math
from reward_fns.math_reward import math_fast_path

math_reward = get_reward("math")
strict_math = get_reward("strict_math")

EQUIVALENT = [
    ("\\frac{1}{2}", "0.5"),
    ("1/2", "\\frac{1}{2}"),
    ("\\dfrac12", "0.5"),
    ("\\tfrac{1}{2}", "1/2"),
    ("0.5", ".5"),
    ("5.0", "5"),
    ("5.00", "5"),
    ("1,000", "1000"),
    ("10^\\circ", "10"),
    ("10^{\\circ}", "10"),
    ("5 cm", "5"),
    ("5\\text{ cm}^2", "5"),
    ("\\text{5 dollars}", "5"),
    ("\\$5", "5"),
    ("50\\%", "50"),
    ("x = 4", "4"),
    ("\\left(1,2\\right)", "(1, 2)"),
    ("3\\!\\,000", "3000"),
    ("\\frac{5}{6}", "5/6"),
    ("2x+1", "1+2x"),
    ("\\sqrt{8}", "2\\sqrt{2}"),
    ("\\sqrt2", "\\sqrt{2}"),
    ("(A)", "A"),
    ("\\text{Monday}", "monday"),
    ("-\\frac{1}{2}", "-0.5"),
    ("\\pi r^2", "\\pi r^2"),
    ("x^2+2x+1", "(x+1)^2"),
    ("\\frac{\\sqrt{3}}{2}", "\\frac{\\sqrt3}{2}"),
    ("[1,2)", "[1, 2)"),
]
NOT_EQUIVALENT = [
    ("\\frac{1}{3}", "0.33"),
    ("3", "4"),
    ("2x-1", "2x+1"),
    ("3.14", "\\pi"),
    ("(1,2)", "[1,2]"),
    ("\\sqrt{3}", "3"),
    ("x", "y"),
    ("-5", "5"),
    ("12", "1,2"),
    ("", "5"),
]


@pytest.mark.parametrize("pred,gold", EQUIVALENT)
def test_equivalent(pred, gold):
    assert math_reward(f"So the answer is $\\boxed{{{pred}}}$.", gold).score == 1.0


@pytest.mark.parametrize("pred,gold", NOT_EQUIVALENT)
def test_not_equivalent(pred, gold):
    assert math_reward(f"So the answer is $\\boxed{{{pred}}}$.", gold).score == 0.0


def test_nested_braces_in_boxed():
    assert last_boxed("\\boxed{\\frac{1}{\\sqrt{2}}} and more") == "\\frac{1}{\\sqrt{2}}"
    assert last_boxed("first \\boxed{1} then \\boxed{\\{1,2\\}}") == "\\{1,2\\}"
    assert last_boxed("\\boxed 5 done") == "5"
    assert last_boxed("\\boxed{3} and then a cut-off \\boxed{4") == "3"
    assert last_boxed("no box") is None


def test_extraction_order():
    assert extract_math_answer("\\boxed{1}. Final Answer: The final answer is 2. I hope it is correct.") == (
        "1",
        "boxed",
    )
    assert extract_math_answer("Final Answer: The final answer is $2$. I hope it is correct.") == (
        "2",
        "minerva",
    )
    assert extract_math_answer("we get $x=3$ and so $y = 7$") == ("y = 7", "dollars")
    assert extract_math_answer("the final answer is 3.5") == ("3.5", "minerva")
    assert extract_math_answer("no answer here") == (None, "none")


def test_minerva_forms():
    text = "Final Answer: The final answer is $\\frac{1}{2}$. I hope it is correct."
    assert minerva_answer(text, strict=True) == "\\frac{1}{2}"
    assert minerva_answer("The final answer is 7", strict=True) is None
    assert minerva_answer("so the FINAL ANSWER IS: 7.") == "7"


def test_strict_accepts_only_minerva():
    assert strict_math("Final Answer: The final answer is 15. I hope it is correct.", "15").score == 1.0
    assert strict_math("Final Answer: The final answer is 3.5. I hope it is correct.", "7/2").score == 1.0
    assert strict_math("So \\boxed{15}", "15").score == 0.0
    assert strict_math("The final answer is 15.", "15").score == 0.0


def test_whole_short_answer_is_compared_as_a_string_only():
    assert math_reward("42", "42").score == 1.0
    assert math_reward("probably 15 or so", "15").score == 0.0


def test_thinking_and_truncation():
    assert math_reward("<think>\\boxed{3}</think> so \\boxed{4}", "4").score == 1.0
    assert math_reward("<think>\\boxed{4}", "4").score == 0.0


def test_list_of_acceptable_answers():
    assert math_reward("\\boxed{-2}", ["2", "-2"]).score == 1.0


def test_fast_path_decides_strings_and_numbers_and_defers_the_rest():
    assert math_fast_path("\\boxed{\\frac{1}{2}}", "0.5").score == 1.0
    assert math_fast_path("\\boxed{3}", "4").score == 0.0
    assert math_fast_path("no answer at all, sorry", "4").score == 0.0
    assert math_fast_path("\\boxed{1+2x}", "2x+1") is None


def test_normalisation_does_not_damage_answers():
    assert normalize_math("\\tan x") != normalize_math("\\tx")
    assert normalize_math("2m") == "2m"  # a variable, not metres
    assert fast_equal("\\pi r^2", "\\pir^2") is not True


def test_very_long_answer_is_no_answer():
    assert math_reward("\\boxed{" + "1" * 1000 + "}", "1" * 1000).score == 0.0
