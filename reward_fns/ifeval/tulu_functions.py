"""The 25 constraint functions of the Tülu 3 IF data (``func_name`` labels).

The rows of allenai/RLVR-GSM-MATH-IF-Mixed-Constraints carry ``{"func_name": ..., <args>}`` with
every argument key present and the ones that do not apply set to null; nulls are dropped before the
call. Argument names are the data's (``N``, ``quantifier``, ``keyword_list`` ...). The meaning of each
function is the one in docs/rewards.md (and REFERENCE.md section 3); where the short description
leaves a choice open, the choice is written next to the function.

Shared rules:
* ``quantifier`` is ``at least`` (>= N), ``at most`` (<= N) or ``around``: within
  ``max(1, round(0.1 * N))`` of N (the Tülu word-count tolerance, used for every "around").
* counting is case-insensitive wherever the constraint names a word or letter.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable

from .instructions import count_bracketed, to_int
from .text_units import LanguageUnknown, count_sentences, detect_language


def quantified(count: int, n, quantifier) -> bool:
    n = to_int(n, "N")
    q = str(quantifier).strip().lower()
    if q == "at least":
        return count >= n
    if q == "at most":
        return count <= n
    if q == "around":
        return abs(count - n) <= max(1, round(0.1 * n))
    if q in ("less than", "fewer than"):
        return count < n
    if q in ("more than",):
        return count > n
    if q in ("exactly",):
        return count == n
    raise ValueError(f"quantifier {quantifier!r} is not 'at least', 'at most' or 'around'")


def string_list(value, what: str) -> list[str]:
    """A list argument; the data sometimes stores it as a Python/JSON repr string."""
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    if isinstance(value, str):
        text = value.strip()
        if text[:1] in "[(" and text[-1:] in "])":
            for parse in (json.loads, ast.literal_eval):
                try:
                    parsed = parse(text)
                except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                    continue
                if isinstance(parsed, (list, tuple)):
                    return [str(v) for v in parsed]
        return [value]
    raise ValueError(f"{what} must be a list of strings, got {value!r}")


def _whole_word(phrase: str) -> re.Pattern:
    return re.compile(r"(?<!\w)" + re.escape(phrase.strip()) + r"(?!\w)", re.IGNORECASE)


def verify_keywords(text: str, keyword_list) -> bool:
    """Every keyword appears (case-insensitive substring, as IFEval's keyword existence)."""
    lower = text.lower()
    return all(k.lower() in lower for k in string_list(keyword_list, "keyword_list"))


def verify_keyword_frequency(text: str, word, N) -> bool:
    """The word (or phrase) appears exactly N times as a whole word, ignoring case."""
    return len(_whole_word(str(word)).findall(text)) == to_int(N, "N")


def validate_forbidden_words(text: str, forbidden_words) -> bool:
    """None of the words appears as a whole word, ignoring case ("car" is not found in "scary")."""
    return not any(
        _whole_word(w).search(text) for w in string_list(forbidden_words, "forbidden_words") if w.strip()
    )


def verify_letter_frequency(text: str, letter, N) -> bool:
    """The letter appears exactly N times, upper or lower case."""
    letter = str(letter)
    if len(letter) != 1:
        raise ValueError(f"letter must be a single character, got {letter!r}")
    return text.lower().count(letter.lower()) == to_int(N, "N")


def validate_response_language(text: str, language) -> bool:
    """langdetect (seeded) names the given ISO 639-1 code; a text with nothing to detect fails."""
    try:
        return detect_language(text) == str(language).strip().lower()
    except LanguageUnknown:
        return False


def verify_paragraph_count(text: str, N) -> bool:
    """Exactly N paragraphs separated by the divider ``* * *``, none of them empty."""
    cleaned = "\n".join(line.strip() for line in text.splitlines()).strip()
    paragraphs = cleaned.split("* * *")
    if any(not p.strip() for p in paragraphs):
        return False
    return len(paragraphs) == to_int(N, "N")


def validate_word_constraint(text: str, N, quantifier) -> bool:
    """Whitespace-separated word count compared with N by the quantifier."""
    return quantified(len(text.split()), N, quantifier)


def verify_sentence_constraint(text: str, N, quantifier) -> bool:
    """Sentence count (see text_units.split_sentences) compared with N by the quantifier."""
    return quantified(count_sentences(text), N, quantifier)


_PARAGRAPH_BREAK = re.compile(r"\n[^\S\n]*\n\s*")
_LEADING_MARKUP = re.compile(r"^[\s\"'*_#>(\[]+")
_WORD_EDGE_PUNCT = ".,;:!?\"')]*_"


def validate_paragraphs(text: str, N, first_word, i) -> bool:
    """Exactly N non-empty paragraphs separated by blank lines, and paragraph i (1-based) starts with
    ``first_word``: its first word, ignoring case and surrounding quotes/markdown/punctuation, equals it."""
    paragraphs = [p for p in _PARAGRAPH_BREAK.split(text.strip()) if p.strip()]
    n, idx = to_int(N, "N"), to_int(i, "i")
    if len(paragraphs) != n or not 1 <= idx <= n:
        return False
    head = _LEADING_MARKUP.sub("", paragraphs[idx - 1])
    words = head.split(None, 1)
    if not words:
        return False
    return words[0].strip(_WORD_EDGE_PUNCT).lower() == str(first_word).strip().strip(_WORD_EDGE_PUNCT).lower()


def verify_postscript(text: str, postscript_marker) -> bool:
    """The marker (e.g. ``P.S.``) appears and some text follows it."""
    marker = str(postscript_marker).strip()
    at = text.rfind(marker)
    return bool(marker) and at >= 0 and bool(text[at + len(marker) :].strip())


def validate_placeholders(text: str, N) -> bool:
    """At least N square-bracket placeholders like ``[address]``."""
    return count_bracketed(text) >= to_int(N, "N")


_BULLET = re.compile(r"[*\-][^\S\n]+\S")
_RULE = re.compile(r"([*\-])(?:\s*\1){2,}")


def verify_bullet_points(text: str, N) -> bool:
    """Exactly N markdown bullet lines: ``*`` or ``-`` then a space then text (``* * *`` and ``---``
    dividers are not bullets)."""
    bullets = 0
    for line in text.split("\n"):
        if not line or line.lstrip()[:1] not in ("*", "-"):
            continue
        line = line.strip()
        if _BULLET.match(line) and not _RULE.fullmatch(line):
            bullets += 1
    return bullets == to_int(N, "N")


_TITLE = re.compile(r"<<([^\n<>]*)>>")


def validate_title(text: str) -> bool:
    """A title wrapped in double angular brackets, ``<<like this>>``, not empty."""
    return any(m.group(1).strip() for m in _TITLE.finditer(text))


def validate_choice(text: str, options) -> bool:
    """The response contains one of the options (a list, or its repr as stored in the data)."""
    return any(o.strip() and o.strip() in text for o in string_list(options, "options"))


_STAR_RUN = re.compile(r"\*+")


def validate_highlighted_sections(text: str, N) -> bool:
    """At least N non-empty sections highlighted with markdown, ``*like this*`` (``**bold**`` counts)."""
    # What re.findall(r"\*+([^\n*]+)\*+") finds, in linear time (that regex is quadratic on a long run
    # of "*"): on each line, the pieces between runs of stars pair up as open-run, text, close-run.
    count = 0
    for line in text.split("\n"):
        if "*" not in line:
            continue
        pieces = _STAR_RUN.split(line)
        count += sum(1 for piece in pieces[1:-1:2] if piece.strip())
    return count >= to_int(N, "N")


def validate_sections(text: str, N, section_splitter) -> bool:
    """Exactly N sections, each starting with the splitter word (e.g. ``Section 1``, ``SECTION 2``) at the
    start of a line (markdown ``#``/``*`` allowed before it; the word's case must match the
    instruction). Text before the first section counts as a section that does not start correctly."""
    splitter = str(section_splitter).strip()
    if not splitter:
        raise ValueError("section_splitter must not be empty")
    header = re.compile(r"^[^\S\n]*(?:[#*]+[^\S\n]*)?" + re.escape(splitter) + r"\b", re.MULTILINE)
    starts = [m.start() for m in header.finditer(text)]
    if not starts or text[: starts[0]].strip():
        return False
    return len(starts) == to_int(N, "N")


def validate_json_format(text: str) -> bool:
    """The whole response (surrounding whitespace aside) is valid JSON."""
    try:
        json.loads(text.strip())
    except (ValueError, RecursionError):
        return False
    return True


def validate_repeat_prompt(text: str, original_prompt) -> bool:
    """The response starts by repeating the request word for word (leading whitespace aside)."""
    prompt = str(original_prompt).strip()
    return bool(prompt) and text.lstrip().startswith(prompt)


def validate_two_responses(text: str) -> bool:
    """Two different, non-empty responses separated by exactly one ``******``."""
    if text.count("******") != 1:
        return False
    first, second = (p.strip() for p in text.split("******"))
    return bool(first) and bool(second) and first != second


def validate_uppercase(text: str) -> bool:
    """All letters are capitals (and there is at least one letter)."""
    return text.isupper()


def validate_lowercase(text: str) -> bool:
    """All letters are lower case (and there is at least one letter)."""
    return text.islower()


_CAPITAL_WORD = re.compile(r"\b[A-Z][A-Z'\-]*\b")


def validate_frequency_capital_words(text: str, N, quantifier) -> bool:
    """Number of all-capital words compared with N by the quantifier."""
    return quantified(len(_CAPITAL_WORD.findall(text)), N, quantifier)


def validate_end(text: str, end_phrase) -> bool:
    """The response ends with exactly that phrase (trailing whitespace aside)."""
    phrase = str(end_phrase).strip()
    return bool(phrase) and text.rstrip().endswith(phrase)


def validate_quotation(text: str) -> bool:
    """The whole response is wrapped in double quotes."""
    t = text.strip()
    return len(t) > 1 and t[0] == '"' and t[-1] == '"'


def validate_no_commas(text: str) -> bool:
    """No commas at all."""
    return "," not in text


FUNCTIONS: dict[str, Callable[..., bool]] = {
    f.__name__: f
    for f in (
        verify_keywords,
        verify_keyword_frequency,
        validate_forbidden_words,
        verify_letter_frequency,
        validate_response_language,
        verify_paragraph_count,
        validate_word_constraint,
        verify_sentence_constraint,
        validate_paragraphs,
        verify_postscript,
        validate_placeholders,
        verify_bullet_points,
        validate_title,
        validate_choice,
        validate_highlighted_sections,
        validate_sections,
        validate_json_format,
        validate_repeat_prompt,
        validate_two_responses,
        validate_uppercase,
        validate_lowercase,
        validate_frequency_capital_words,
        validate_end,
        validate_quotation,
        validate_no_commas,
    )
}
