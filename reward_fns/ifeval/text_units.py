"""Words, sentences and language of a response, without nltk.

Google's IFEval counts sentences with nltk's punkt model, words with nltk's ``\\w+`` tokenizer, and
capital words with ``nltk.word_tokenize``. punkt's data cannot be downloaded on our machines, so these
are small re-implementations of the same behaviour:

* words: runs of word characters (exactly nltk's ``RegexpTokenizer(r"\\w+")``).
* word tokens (for all-capital words): words, with their internal apostrophes/hyphens/periods kept
  (``U.S.``, ``don't``), punctuation split off.
* sentences: a sentence ends at ``.``, ``!`` or ``?`` (possibly repeated, possibly followed by closing
  quotes/brackets) followed by whitespace or the end of the text. As in punkt, a period does not end a
  sentence after a title (Mr., Dr.), a single-letter initial (J. Smith), e.g./i.e./vs., or another
  known abbreviation (etc.) unless a capitalised word follows; an ellipsis followed by a lower-case
  word does not end one; a period inside a number (3.14) is not a candidate. Line breaks alone do not
  end a sentence (punkt does not split on them either).
* language: langdetect, seeded (DetectorFactory.seed = 0) so the same text always gets the same
  answer, imported lazily, results cached.
"""

from __future__ import annotations

import functools
import re

_WORD = re.compile(r"\w+")
_WORD_TOKEN = re.compile(r"\w+(?:['\u2019.\-]\w+)*\.?|[^\w\s]")
_ABBREVIATIONS = frozenset(
    {
        "mr",
        "mrs",
        "ms",
        "dr",
        "prof",
        "sr",
        "jr",
        "st",
        "vs",
        "etc",
        "e.g",
        "i.e",
        "eg",
        "ie",
        "inc",
        "ltd",
        "co",
        "corp",
        "no",
        "vol",
        "fig",
        "approx",
        "dept",
        "est",
        "gen",
        "gov",
        "lt",
        "capt",
        "col",
        "sgt",
        "mt",
        "ave",
        "jan",
        "feb",
        "mar",
        "apr",
        "jun",
        "jul",
        "aug",
        "sep",
        "sept",
        "oct",
        "nov",
        "dec",
        "a.m",
        "p.m",
        "u.s",
        "u.k",
        "ph.d",
        "cf",
        "al",
    }
)
_TITLES = frozenset({"mr", "mrs", "ms", "dr", "prof", "st", "mt", "capt", "col", "gen", "lt", "sgt", "gov"})
_WORD_BEFORE = re.compile(r"([\w.]+)$")
# Candidate sentence ends: terminal punctuation, optional closing quotes/brackets, then whitespace or end.
_END = re.compile(r"[.!?]+[\"'\u201d\u2019)\]]*(?=\s|$)")
_NEXT_CHAR = re.compile(r"\s*(\S)")


def count_words(text: str) -> int:
    return len(_WORD.findall(text))


def words(text: str) -> list[str]:
    return _WORD.findall(text)


def word_tokens(text: str) -> list[str]:
    tokens = []
    for tok in _WORD_TOKEN.findall(text):
        # A trailing period is sentence punctuation unless the token is an abbreviation like "U.S.".
        if tok.endswith(".") and len(tok) > 1 and "." not in tok[:-1]:
            tokens.append(tok[:-1])
            tokens.append(".")
        else:
            tokens.append(tok)
    return tokens


def _is_boundary(text: str, end_match: re.Match) -> bool:
    """Punkt's behaviour in short: every terminal mark ends a sentence, except a period after a title
    (Mr., Dr.) or a single-letter initial, a period after other abbreviations (etc., e.g.) unless a
    capitalised word follows, and an ellipsis followed by a lower-case word."""
    punct = end_match.group(0)
    nxt = _NEXT_CHAR.match(text, end_match.end())
    if nxt is None:
        return True
    following = nxt.group(1)
    if not punct.startswith("."):
        return True
    if punct.startswith("..."):
        return not following.islower()
    m = _WORD_BEFORE.search(text, max(0, end_match.start() - 20), end_match.start())
    word = m.group(1).lower() if m else ""
    if (
        word in _TITLES
        or (len(word) == 1 and word.isalpha())
        or word in ("e.g", "i.e", "eg", "ie", "vs", "cf")
    ):
        return False
    if word in _ABBREVIATIONS:
        return following.isupper()
    return True


def split_sentences(text: str) -> list[str]:
    sentences = []
    last = 0
    for m in _END.finditer(text):
        if _is_boundary(text, m):
            piece = text[last : m.end()].strip()
            if piece:
                sentences.append(piece)
            last = m.end()
    tail = text[last:].strip()
    if tail:
        sentences.append(tail)
    return sentences


def count_sentences(text: str) -> int:
    return len(split_sentences(text))


class LanguageUnknown(Exception):
    """langdetect found no usable features (e.g. only digits or punctuation)."""


@functools.lru_cache(maxsize=4096)
def detect_language(text: str) -> str:
    from langdetect import DetectorFactory, detect
    from langdetect.lang_detect_exception import LangDetectException

    DetectorFactory.seed = 0
    try:
        return detect(text)
    except LangDetectException as e:
        raise LanguageUnknown(str(e)) from e


def warmup() -> None:
    """Load langdetect's profiles (~0.3 s) ahead of the first sample."""
    try:
        detect_language("This is a short English sentence for warming up.")
    except LanguageUnknown:
        pass
