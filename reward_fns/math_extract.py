"""Finding the final answer in a MATH-style solution.

Flexible order (Tülu 3 ``math``): the last ``\\boxed{...}`` (nested braces are balanced; ``\\fbox`` and
``\\boxed 5`` too), else the Minerva sentence "Final Answer: The final answer is X. I hope it is
correct." (matched loosely: any case, the closing sentence optional), else the content of the last
``$...$``. The strict variant (``strict_math``) accepts only the Minerva sentence, spelled exactly.

Every scan here is linear in the text length: completions can be a megabyte of junk.
"""

from __future__ import annotations

import re

from .answer_text import last_match

# An answer longer than this is not a final answer (and would only make normalisation and the
# symbolic checker slow): it is treated as "no answer".
MAX_ANSWER_CHARS = 500

_BOX_COMMANDS = ("\\boxed", "\\fbox")
_STRICT_MINERVA = re.compile(r"Final Answer: The final answer is (.*?)(?:\. I hope it is correct\.|\n|$)")
_LOOSE_MINERVA = re.compile(r"final answer is[:\s]*", re.IGNORECASE)
_HOPE = re.compile(r"\.?\s*I hope it is correct\.?", re.IGNORECASE)


_BRACES = re.compile(r"\\[{}]|[{}]")


def _balanced_group(text: str, open_at: int) -> str | None:
    """Content of the ``{...}`` group whose ``{`` is at ``open_at``, or None if it never closes.
    ``\\{`` and ``\\}`` are literal braces (sets), not grouping, so they do not count."""
    depth = 0
    for m in _BRACES.finditer(text, open_at):
        tok = m.group(0)
        if tok == "{":
            depth += 1
        elif tok == "}":
            depth -= 1
            if depth == 0:
                return text[open_at + 1 : m.start()]
    return None


def last_boxed(text: str, tries: int = 3) -> str | None:
    """Content of the last box that closes (the last few only: a truncated final box falls back to the
    one before it, but a megabyte of unclosed boxes is not scanned quadratically)."""
    end = len(text)
    for _ in range(tries):
        start = max(text.rfind(cmd, 0, end) for cmd in _BOX_COMMANDS)
        if start < 0:
            return None
        cmd_len = len("\\boxed") if text.startswith("\\boxed", start) else len("\\fbox")
        i = start + cmd_len
        while i < len(text) and text[i] == " ":
            i += 1
        if i < len(text) and text[i] == "{":
            content = _balanced_group(text, i)
            if content is not None:
                return content
        elif i > start + cmd_len:
            # "\boxed 5": the token after the space.
            m = re.match(r"[^\s$]+", text[i : i + MAX_ANSWER_CHARS])
            if m:
                return m.group(0)
        end = start
    return None


def minerva_answer(text: str, strict: bool = False) -> str | None:
    """X from "Final Answer: The final answer is X. I hope it is correct." (the last one)."""
    if strict:
        found = last_match(_STRICT_MINERVA, text)
        if found is None:
            return None
        answer = found.group(1).strip()
    else:
        found = last_match(_LOOSE_MINERVA, text)
        if found is None:
            return None
        rest = text[found.end() :]
        line = rest.split("\n", 1)[0]
        answer = _HOPE.split(line, 1)[0].strip()
    answer = answer.rstrip(".").strip()
    if len(answer) >= 2 and answer[0] == "$" and answer[-1] == "$":
        answer = answer.strip("$").strip()
    return answer or None


def last_dollar_math(text: str) -> str | None:
    """Content of the last ``$...$`` (``$$...$$`` too); escaped ``\\$`` signs are ignored."""
    positions = [m.start() for m in re.finditer(r"(?<!\\)\$", text)]
    # Collapse $$ pairs into single delimiters.
    merged: list[int] = []
    for p in positions:
        if merged and p == merged[-1] + 1:
            continue
        merged.append(p)
    if len(merged) < 2:
        return None
    a, b = merged[-2], merged[-1]
    start = a + (2 if text.startswith("$$", a) else 1)
    content = text[start:b].strip()
    return content or None


def extract_math_answer(text: str, strict: bool = False) -> tuple[str | None, str]:
    """(answer, how) with how in boxed / minerva / dollars / none."""
    if strict:
        ans = minerva_answer(text, strict=True)
        return (ans, "minerva") if ans is not None else (None, "none")
    ans = last_boxed(text)
    if ans is not None:
        return ans, "boxed"
    ans = minerva_answer(text)
    if ans is not None:
        return ans, "minerva"
    ans = last_dollar_math(text)
    if ans is not None:
        return ans, "dollars"
    return None, "none"
