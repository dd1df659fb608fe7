"""Property tests: whatever strings and labels arrive, the runner returns a score in [0, 1] for every
built-in and never raises."""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reward_fns import RewardRunner
from reward_fns.ifeval import FUNCTIONS, INSTRUCTIONS

SETTINGS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def runner():
    with RewardRunner(timeout_s=5, num_workers=1) as r:
        yield r


text = st.text(max_size=300)
mathy = st.lists(
    st.sampled_from(
        [
            "\\boxed{",
            "}",
            "{",
            "\\frac",
            "12",
            "3.5",
            "$",
            "x",
            "^",
            "\\sqrt",
            "-",
            "/",
            ",",
            "=",
            "\\left(",
            "\\right)",
            "\\text{",
            " cm",
            "The final answer is ",
            "<think>",
            "</think>",
            "\\pi",
            "\n",
        ]
    ),
    max_size=30,
).map("".join)
json_value = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 50) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3),
    max_leaves=6,
)
tulu_label = st.builds(
    lambda f, kw: json.dumps({"func_name": f, **kw}),
    st.sampled_from(sorted(FUNCTIONS)),
    st.dictionaries(
        st.sampled_from(
            [
                "N",
                "quantifier",
                "keyword_list",
                "word",
                "letter",
                "end_phrase",
                "forbidden_words",
                "postscript_marker",
                "language",
                "options",
                "first_word",
                "i",
                "section_splitter",
                "original_prompt",
            ]
        ),
        json_value,
        max_size=4,
    ),
)
ifeval_label = st.builds(
    lambda ids, kws: {"instruction_id": ids, "kwargs": kws},
    st.lists(st.sampled_from(sorted(INSTRUCTIONS)), min_size=1, max_size=3),
    st.lists(st.dictionaries(st.text(max_size=15), json_value, max_size=3), max_size=3),
)


def check(batch, n):
    assert len(batch.scores) == n
    assert all(0.0 <= s <= 1.0 for s in batch.scores)


@SETTINGS
@given(
    st.lists(
        st.tuples(text | mathy, text | st.integers() | st.floats(allow_nan=True)), min_size=1, max_size=8
    )
)
def test_gsm8k_never_raises(runner, rows):
    check(runner.score([c for c, _ in rows], [g for _, g in rows], ["gsm8k"] * len(rows)), len(rows))


@SETTINGS
@given(st.lists(st.tuples(text | mathy, text | mathy), min_size=1, max_size=8))
def test_math_never_raises(runner, rows):
    for name in ("math", "strict_math"):
        check(runner.score([c for c, _ in rows], [g for _, g in rows], [name] * len(rows)), len(rows))


@SETTINGS
@given(st.lists(st.tuples(text, tulu_label | ifeval_label | text | json_value), min_size=1, max_size=8), text)
def test_ifeval_never_raises(runner, rows, prompt):
    for name in ("ifeval", "ifeval_loose"):
        batch = runner.score(
            [c for c, _ in rows], [g for _, g in rows], [name] * len(rows), prompts=[prompt] * len(rows)
        )
        check(batch, len(rows))


@SETTINGS
@given(st.lists(st.tuples(text, text | json_value), min_size=1, max_size=8))
def test_text_rewards_never_raise(runner, rows):
    for name in ("string_match", "f1", "max_length"):
        check(runner.score([c for c, _ in rows], [g for _, g in rows], [name] * len(rows)), len(rows))
