"""String normalisation of MATH answers, and the cheap numeric comparison built on it.

The rules follow the Minerva (Lewkowycz et al. 2022) and Hendrycks MATH normalisers, written so they
cannot damage an answer (e.g. no blind removal of the letters "an"): drop math delimiters and a
wrapping ``\\boxed{}``, ``\\left``/``\\right``, spacing commands (``\\!``, ``\\,``, ``\\;``, ``\\ ``),
``\\displaystyle``, degree marks (``^\\circ``), ``\\%``, ``\\$``, unit words after a number (``5 cm``,
``\\text{ dollars}``), ``\\text{...}``-style wrappers (their content is kept), all spaces, a trailing
period and trailing zeros (``5.0`` -> ``5``); ``\\dfrac``/``\\tfrac`` -> ``\\frac``; shorthand
``\\frac12``/``\\sqrt2`` get their braces; ``x = 5`` keeps the right side when the left is a variable;
``1,000`` -> ``1000``.

``fast_equal`` decides most pairs without a symbolic engine: equal normalised strings are equal, and
two plain numbers (integers, decimals, ``a/b``, ``\\frac{a}{b}``) are compared exactly as fractions, and
so are two intervals/points of plain numbers (brackets must match).
Everything else is left to ``math_verify`` (see ``math_reward``).
"""

from __future__ import annotations

import re
from fractions import Fraction

from .math_extract import last_boxed

_UNITS = sorted(
    {
        "square",
        "sq",
        "ways",
        "integers",
        "dollars",
        "dollar",
        "cents",
        "cent",
        "mph",
        "inches",
        "inch",
        "ft",
        "feet",
        "foot",
        "hours",
        "hour",
        "hrs",
        "minutes",
        "minute",
        "mins",
        "seconds",
        "second",
        "secs",
        "days",
        "day",
        "weeks",
        "years",
        "year",
        "km",
        "kilometers",
        "meters",
        "meter",
        "metres",
        "cm",
        "centimeters",
        "mm",
        "miles",
        "mile",
        "units",
        "unit",
        "points",
        "point",
        "digits",
        "degrees",
        "degree",
        "gm",
        "grams",
        "kg",
        "pounds",
        "pound",
        "lbs",
        "ounces",
        "oz",
        "meals",
        "edges",
        "students",
        "people",
        "multiples",
        "liters",
        "litres",
        "ml",
        "gallons",
        "cups",
        "pages",
        "apples",
        "percent",
        "sqft",
        "cubic",
        "radians",
        "rad",
    },
    key=len,
    reverse=True,
)
_UNIT_ALT = "|".join(re.escape(u) for u in _UNITS)
# "<something ending in a digit or brace> [\text{] unit[^2|^3] [}]" at the very end of the answer.
_TRAILING_UNIT = re.compile(
    rf"^(.*?[\d}}])\s*(?:\\(?:text|mbox|mathrm)\s*\{{\s*)?(?:{_UNIT_ALT})(?:\s*\}})?(?:\^\{{?[23]\}}?)?(?:\s*\}})?\s*$"
)
_TEXT_WRAPPER = re.compile(
    r"\\(?:text|textbf|textit|textrm|mathrm|mathbf|mathit|mbox|operatorname)\s*\{([^{}]*)\}"
)
_DROP_TOKENS = (
    "\\left",
    "\\right",
    "\\displaystyle",
    "\\!",
    "\\,",
    "\\;",
    "\\:",
    "\\ ",
    "\\quad",
    "\\qquad",
    "^{\\circ}",
    "^\\circ",
    "°",
    "\\%",
    "%",
    "\\$",
    "$",
    "~",
)
_COMMAND_SPACE = re.compile(r"(\\[A-Za-z]+)\s+(?=[A-Za-z])")
_SHORT_LHS = re.compile(r"^(?:[A-Za-z](?:_\{?\w+\}?)?|\\[A-Za-z]+)$")
_FRAC_TWO_DIGITS = re.compile(r"\\frac(\d)(\d)")
_FRAC_DIGIT_BRACE = re.compile(r"\\frac(\d)\{")
_FRAC_BRACE_DIGIT = re.compile(r"\\frac\{([^{}]*)\}(\d)")
_SQRT_SHORT = re.compile(r"\\sqrt(\w)")
_THOUSANDS_ONLY = re.compile(r"^[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_TRAILING_ZEROS = re.compile(r"(?<![\d.])(\d+)\.0+(?!\d)")
_LEADING_DOT = re.compile(r"(?<![\d}])\.(\d)")
_SIMPLE_NUMBER = re.compile(r"^([-+]?)(?:(\d+)(?:\.(\d+))?|\\frac\{(\d+)\}\{(\d+)\}|(\d+)/(\d+))$")
_CHOICE = re.compile(r"^\(([A-Za-z])\)$")
_WORDS = re.compile(r"^[A-Za-z][A-Za-z ]+$")


def _strip_delimiters(s: str) -> str:
    s = s.strip()
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if s.startswith(left) and s.endswith(right) and len(s) >= len(left) + len(right):
            s = s[len(left) : len(s) - len(right)].strip()
    return s


def normalize_math(answer) -> str:
    s = str(answer).replace("\n", " ").strip()
    s = _strip_delimiters(s)
    if s.startswith(("\\boxed", "\\fbox")):
        inner = last_boxed(s)
        if inner is not None:
            s = inner
    s = s.strip().rstrip(".").strip()
    s = _strip_delimiters(s)
    # "x = 5" -> "5" when the left side is just a variable name; equations with expressions stay.
    if s.count("=") == 1:
        lhs, rhs = s.split("=")
        if _SHORT_LHS.match(lhs.strip()) and rhs.strip():
            s = rhs.strip()
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = s.replace("\\text{}", "").replace("\\mbox{}", "")
    s = _TEXT_WRAPPER.sub(r"\1", s)
    if len(s) <= 200:
        m = _TRAILING_UNIT.match(s)
        if m:
            s = m.group(1)
    for tok in _DROP_TOKENS:
        s = s.replace(tok, "")
    # Spaces go, except where one ends a command name ("\\pi r" must not become "\\pir").
    s = _COMMAND_SPACE.sub(r"\1{}", s)
    s = s.replace(" ", "")
    s = _FRAC_TWO_DIGITS.sub(r"\\frac{\1}{\2}", s)
    s = _FRAC_DIGIT_BRACE.sub(r"\\frac{\1}{", s)
    s = _FRAC_BRACE_DIGIT.sub(r"\\frac{\1}{\2}", s)
    s = _SQRT_SHORT.sub(r"\\sqrt{\1}", s)
    if _THOUSANDS_ONLY.match(s):
        s = s.replace(",", "")
    s = _LEADING_DOT.sub(r"0.\1", s)
    s = _TRAILING_ZEROS.sub(r"\1", s)
    s = s.rstrip(".")
    m = _CHOICE.match(s)
    if m:
        s = m.group(1)
    if s.startswith("+"):
        s = s[1:]
    return s


def simple_number(s: str) -> Fraction | None:
    """Exact value of a normalised plain number (int, decimal, a/b, \\frac{a}{b}), else None."""
    m = _SIMPLE_NUMBER.match(s)
    if not m:
        return None
    sign, whole, frac_digits, fnum, fden, snum, sden = m.groups()
    if whole is not None:
        value = Fraction(int(whole))
        if frac_digits:
            value += Fraction(int(frac_digits), 10 ** len(frac_digits))
    else:
        num, den = (fnum, fden) if fnum is not None else (snum, sden)
        if int(den) == 0:
            return None
        value = Fraction(int(num), int(den))
    return -value if sign == "-" else value


_TUPLE = re.compile(r"^([(\[])([^,()\[\]]+),([^,()\[\]]+)([)\]])$")


def _number_tuple(s: str) -> tuple | None:
    """("(", 1, 2, "]") for "(1,2]" when both entries are plain numbers, else None."""
    m = _TUPLE.match(s)
    if not m:
        return None
    a, b = simple_number(m.group(2)), simple_number(m.group(3))
    if a is None or b is None:
        return None
    return m.group(1), a, b, m.group(4)


def fast_equal(pred: str, gold: str) -> bool | None:
    """True/False when string normalisation settles it, None when a symbolic check is needed."""
    p, g = normalize_math(pred), normalize_math(gold)
    if p == g:
        return True
    if not p:
        return False
    if _WORDS.match(p) and _WORDS.match(g) and len(p) > 1 and len(g) > 1:
        return p.lower() == g.lower()
    vp, vg = simple_number(p), simple_number(g)
    if vp is not None and vg is not None:
        return vp == vg
    tp, tg = _number_tuple(p), _number_tuple(g)
    if tp is not None and tg is not None:
        # Intervals / points of plain numbers: same brackets and the same values, exactly.
        return tp == tg
    if vg is not None and not any(ch.isdigit() for ch in p) and "\\" not in p:
        # A number is expected and the answer holds no digit and no LaTeX command: cannot be equal.
        return False
    return None
