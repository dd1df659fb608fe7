"""The part of a completion that built-in verifiers score.

Reasoning models write ``<think> ... </think>`` before their answer. Built-ins score only the text
after the last ``</think>``; a completion that opens ``<think>`` and never closes it has no answer (it
was cut off mid-thought), so it scores as empty instead of being graded on its scratch work. Text with
no think tags is used whole.
"""

from __future__ import annotations

from collections import deque

_OPEN = "<think>"
_CLOSE = "</think>"


def answer_text(completion: str) -> str:
    if not isinstance(completion, str):
        completion = "" if completion is None else str(completion)
    close = completion.rfind(_CLOSE)
    if close >= 0:
        return completion[close + len(_CLOSE) :]
    if _OPEN in completion:
        return ""
    return completion


def last_match(pattern, text: str):
    """The last match of a compiled regex in ``text`` (or None), in one linear scan."""
    tail = deque(pattern.finditer(text), maxlen=1)
    return tail[0] if tail else None
