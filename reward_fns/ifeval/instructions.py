"""The 25 instruction checks of Google's IFEval (Zhou et al. 2023, arXiv 2311.07911), by instruction id.

Each check takes the response and the instruction's kwargs, spelled as in Google's data (typos
included: ``section_spliter``, ``let_frequency``), and returns whether the instruction was followed.
Semantics are IFEval's, including the ones that look odd:

* keyword existence / frequency match case-insensitive substrings (no word boundaries); forbidden
  words match whole words.
* relations are ``less than`` (count < N) and ``at least`` (count >= N); ``at most``, ``more than``
  and ``exactly`` are accepted as well for hand-written labels.
* paragraphs (``number_paragraphs``) are split on ``***``; empty ones are allowed only at the very
  start or end; ``nth_paragraph_first_word`` splits on blank lines ("\\n\\n").
* bullets must be exactly N; highlights, sections and placeholders are "at least N".
* the JSON check strips one markdown code fence first; end and repeat checks ignore case.
* all-capitals / lower-case also require the text to be detected as English.

One deliberate difference: Google counts ``language:response_language`` as followed when langdetect
finds nothing to work with (an empty or digits-only response). An RL policy can exploit that, so here
such a response does not follow the instruction.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

from .text_units import LanguageUnknown, count_sentences, count_words, detect_language, word_tokens


def compare(count: int, n, relation) -> bool:
    n = to_int(n, "N")
    rel = str(relation).strip().lower()
    if rel == "less than":
        return count < n
    if rel == "at least":
        return count >= n
    if rel == "at most":
        return count <= n
    if rel in ("more than", "greater than"):
        return count > n
    if rel in ("exactly", "equal to"):
        return count == n
    raise ValueError(f"relation {relation!r} is not 'less than' or 'at least'")


def to_int(value, what: str) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{what} must be a number, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    raise ValueError(f"{what} must be an integer, got {value!r}")


def as_list(value, what: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    raise ValueError(f"{what} must be a list of strings, got {value!r}")


def keywords_existence(response: str, keywords) -> bool:
    return all(re.search(re.escape(k), response, re.IGNORECASE) for k in as_list(keywords, "keywords"))


def keywords_frequency(response: str, keyword, frequency, relation) -> bool:
    count = len(re.findall(re.escape(str(keyword)), response, re.IGNORECASE))
    return compare(count, frequency, relation)


def keywords_forbidden_words(response: str, forbidden_words) -> bool:
    return not any(
        re.search(r"\b" + re.escape(w) + r"\b", response, re.IGNORECASE)
        for w in as_list(forbidden_words, "forbidden_words")
    )


def keywords_letter_frequency(response: str, letter, let_frequency, let_relation) -> bool:
    letter = str(letter).lower()
    if len(letter) != 1:
        raise ValueError(f"letter must be a single character, got {letter!r}")
    return compare(response.lower().count(letter), let_frequency, let_relation)


def language_response_language(response: str, language) -> bool:
    try:
        return detect_language(response) == str(language).strip().lower()
    except LanguageUnknown:
        return False


def number_sentences(response: str, num_sentences, relation) -> bool:
    return compare(count_sentences(response), num_sentences, relation)


def number_paragraphs(response: str, num_paragraphs) -> bool:
    paragraphs = re.split(r"\s?\*\*\*\s?", response)
    count = len(paragraphs)
    for i, p in enumerate(paragraphs):
        if not p.strip():
            if i in (0, len(paragraphs) - 1):
                count -= 1
            else:
                return False
    return count == to_int(num_paragraphs, "num_paragraphs")


def number_words(response: str, num_words, relation) -> bool:
    return compare(count_words(response), num_words, relation)


_FIRST_WORD_STOP = set(".,?!'\"")


def nth_paragraph_first_word(response: str, num_paragraphs, nth_paragraph, first_word) -> bool:
    paragraphs = re.split(r"\n\n", response)
    count = sum(1 for p in paragraphs if p.strip())
    nth = to_int(nth_paragraph, "nth_paragraph")
    if nth < 1 or nth > count or nth > len(paragraphs):
        return False
    paragraph = paragraphs[nth - 1].strip()
    if not paragraph:
        return False
    word = paragraph.split()[0].strip().lstrip("'").lstrip('"')
    found = ""
    for ch in word:
        if ch in _FIRST_WORD_STOP:
            break
        found += ch.lower()
    return count == to_int(num_paragraphs, "num_paragraphs") and found == str(first_word).strip().lower()


def count_bracketed(text: str) -> int:
    r"""How many times ``re.findall(r"\[.*?\]", text)`` matches, in linear time (the regex is quadratic
    on a long line full of unmatched ``[``): a ``[`` pairs with the next ``]`` on the same line."""
    count = 0
    for line in text.split("\n"):
        i = line.find("[")
        while i >= 0:
            j = line.find("]", i + 1)
            if j < 0:
                break
            count += 1
            i = line.find("[", j + 1)
    return count


def number_placeholders(response: str, num_placeholders) -> bool:
    return count_bracketed(response) >= to_int(num_placeholders, "num_placeholders")


def postscript(response: str, postscript_marker) -> bool:
    marker = str(postscript_marker)
    text = response.lower()
    # Google's patterns start with \s*, which cannot change whether there is a match but makes the
    # search quadratic on long runs of whitespace, so it is left out.
    if marker == "P.P.S":
        pattern = r"p\.\s?p\.\s?s.*$"
    elif marker == "P.S.":
        pattern = r"p\.\s?s\..*$"
    else:
        pattern = re.escape(marker.lower()) + r".*$"
    return re.search(pattern, text, flags=re.MULTILINE) is not None


def number_bullet_lists(response: str, num_bullets) -> bool:
    # Google's ^\s* (which may run over blank lines) is [^\S\n]* here: the same lines are counted, and
    # the search stays linear on a megabyte of newlines.
    stars = re.findall(r"^[^\S\n]*\*[^\*].*$", response, flags=re.MULTILINE)
    dashes = re.findall(r"^[^\S\n]*-.*$", response, flags=re.MULTILINE)
    return len(stars) + len(dashes) == to_int(num_bullets, "num_bullets")


_CONSTRAINED_OPTIONS = ("My answer is yes.", "My answer is no.", "My answer is maybe.")


def constrained_response(response: str) -> bool:
    text = response.strip()
    return any(option in text for option in _CONSTRAINED_OPTIONS)


def number_highlighted_sections(response: str, num_highlights) -> bool:
    count = sum(1 for h in re.findall(r"\*[^\n\*]*\*", response) if h.strip("*").strip())
    count += sum(
        1
        for h in re.findall(r"\*\*[^\n\*]*\*\*", response)
        if h.removeprefix("**").removesuffix("**").strip()
    )
    return count >= to_int(num_highlights, "num_highlights")


def multiple_sections(response: str, section_spliter, num_sections) -> bool:
    pattern = r"\s?" + re.escape(str(section_spliter).strip()) + r"\s?\d+\s?"
    return len(re.split(pattern, response)) - 1 >= to_int(num_sections, "num_sections")


def json_format(response: str) -> bool:
    text = response.strip()
    for fence in ("```json", "```Json", "```JSON", "```"):
        if text.startswith(fence):
            text = text[len(fence) :]
            break
    text = text.removesuffix("```").strip()
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def title(response: str) -> bool:
    # Equivalent to Google's re.findall(r"<<[^\n]+>>") test, line by line in linear time: the greedy
    # match on a line runs from its first "<<" to its last ">>".
    for line in response.split("\n"):
        i = line.find("<<")
        j = line.rfind(">>")
        if i >= 0 and j > i + 2 and line[i : j + 2].lstrip("<").rstrip(">").strip():
            return True
    return False


def two_responses(response: str) -> bool:
    parts = response.split("******")
    valid = []
    for i, part in enumerate(parts):
        if not part.strip():
            if i not in (0, len(parts) - 1):
                return False
        else:
            valid.append(part)
    return len(valid) == 2 and valid[0].strip() != valid[1].strip()


def repeat_prompt(response: str, prompt_to_repeat) -> bool:
    return response.strip().lower().startswith(str(prompt_to_repeat).strip().lower())


def end_checker(response: str, end_phrase) -> bool:
    return response.strip().strip('"').lower().endswith(str(end_phrase).strip().lower())


def capital_word_frequency(response: str, capital_frequency, capital_relation) -> bool:
    count = sum(1 for w in word_tokens(response) if w.isupper())
    return compare(count, capital_frequency, capital_relation)


def _is_english(response: str) -> bool:
    try:
        return detect_language(response) == "en"
    except LanguageUnknown:
        return True  # Google's behaviour; the case test above already requires letters.


def english_capital(response: str) -> bool:
    return response.isupper() and _is_english(response)


def english_lowercase(response: str) -> bool:
    return response.islower() and _is_english(response)


def no_comma(response: str) -> bool:
    return "," not in response


def quotation(response: str) -> bool:
    text = response.strip()
    return len(text) > 1 and text[0] == '"' and text[-1] == '"'


# id -> check. The kwargs each takes are its parameter names (Google's spelling).
INSTRUCTIONS: dict[str, Callable[..., bool]] = {
    "keywords:existence": keywords_existence,
    "keywords:frequency": keywords_frequency,
    "keywords:forbidden_words": keywords_forbidden_words,
    "keywords:letter_frequency": keywords_letter_frequency,
    "language:response_language": language_response_language,
    "length_constraints:number_sentences": number_sentences,
    "length_constraints:number_paragraphs": number_paragraphs,
    "length_constraints:number_words": number_words,
    "length_constraints:nth_paragraph_first_word": nth_paragraph_first_word,
    "detectable_content:number_placeholders": number_placeholders,
    "detectable_content:postscript": postscript,
    "detectable_format:number_bullet_lists": number_bullet_lists,
    "detectable_format:constrained_response": constrained_response,
    "detectable_format:number_highlighted_sections": number_highlighted_sections,
    "detectable_format:multiple_sections": multiple_sections,
    "detectable_format:json_format": json_format,
    "detectable_format:title": title,
    "combination:two_responses": two_responses,
    "combination:repeat_prompt": repeat_prompt,
    "startend:end_checker": end_checker,
    "change_case:capital_word_frequency": capital_word_frequency,
    "change_case:english_capital": english_capital,
    "change_case:english_lowercase": english_lowercase,
    "punctuation:no_comma": no_comma,
    "startend:quotation": quotation,
}
