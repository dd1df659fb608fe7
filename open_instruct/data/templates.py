"""Chat templates as Jinja strings for `tokenizer.chat_template` (REFERENCE.md section 2).

`tulu` (Tülu 3; OLMo 2 is the same with the BOS `<|endoftext|>` in front):

    <|system|>\\n{system}\\n<|user|>\\n{user}\\n<|assistant|>\\n{assistant}{eos}\\n<|user|>\\n...

A non-final assistant turn ends with `{eos}\\n`, the final one with `{eos}`; the generation prompt
is `<|assistant|>\\n`. `olmo` is the ChatML form of OLMo 3: `<|im_start|>{role}\\n{content}<|im_end|>\\n`.

Templates are rendered by the tokenizer itself (`apply_chat_template`), so the model directory
carries its own format to every consumer (the trainer, vLLM, `data inspect`).

A stage's `chat_template` (`choose_template`): `auto` (the default) keeps the tokenizer's own
template when it has one, else installs `tulu`; `tulu` / `olmo` install that one (replacing a
different template of the tokenizer's is a logged warning naming both); null keeps the tokenizer's
own and refuses a tokenizer without one. `template_name` says which template a tokenizer holds.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from ..errors import ConfigError

log = logging.getLogger(__name__)

# Whitespace control (`{%-`/`-%}`) keeps the Jinja layout out of the rendered text.
_TULU = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}"
    "{{ '<|system|>\n' + message['content'] + '\n' }}"
    "{%- elif message['role'] == 'user' -%}"
    "{{ '<|user|>\n' + message['content'] + '\n' }}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{%- if not loop.last -%}"
    "{{ '<|assistant|>\n' + message['content'] + eos_token + '\n' }}"
    "{%- else -%}"
    "{{ '<|assistant|>\n' + message['content'] + eos_token }}"
    "{%- endif -%}"
    "{%- endif -%}"
    "{%- if loop.last and add_generation_prompt -%}"
    "{{ '<|assistant|>\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
)

_OLMO = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{ '<|im_start|>assistant\n' }}"
    "{%- endif -%}"
)

TEMPLATES: dict[str, str] = {"tulu": _TULU, "olmo": _OLMO}

# Generation prompts, for callers that build prompts by hand (e.g. tests, vLLM raw prompts).
GENERATION_PROMPTS: dict[str, str] = {"tulu": "<|assistant|>\n", "olmo": "<|im_start|>assistant\n"}


def get_template(name: str, add_bos: bool = False) -> str:
    """The Jinja source of template `name`; `add_bos` puts `{{ bos_token }}` in front (OLMo 2)."""
    if name not in TEMPLATES:
        raise ConfigError(f"chat template {name!r} is not one of {', '.join(sorted(TEMPLATES))}")
    source = TEMPLATES[name]
    return "{{ bos_token }}" + source if add_bos else source


def install_template(tokenizer, name: str, add_bos: bool = False):
    """Sets `tokenizer.chat_template` to template `name` and returns the tokenizer."""
    if add_bos and tokenizer.bos_token is None:
        raise ConfigError(f"chat template {name!r} with add_bos: the tokenizer has no bos_token")
    tokenizer.chat_template = get_template(name, add_bos)
    return tokenizer


CHOICES = ("auto", "tulu", "olmo")  # a stage's chat_template; null keeps the tokenizer's own
OWN = "the tokenizer's own"


def template_name(source) -> str:
    """Which template `source` (a tokenizer's `chat_template`) is, by content: `tulu`, `olmo`
    (`... with BOS` with the BOS in front), `custom (sha256 <12 hex>)`, or `none`."""
    if not source:
        return "none"
    for name in TEMPLATES:
        if source == get_template(name):
            return name
        if source == get_template(name, add_bos=True):
            return f"{name} with BOS"
    text = source if isinstance(source, str) else json.dumps(source, sort_keys=True)  # named templates
    return f"custom (sha256 {hashlib.sha256(text.encode()).hexdigest()[:12]})"


def choose_template(tokenizer, name: str | None, add_bos: bool = False, source: str = "the tokenizer") -> str:
    """Gives `tokenizer` the template a stage asks for (`name`: auto, tulu, olmo, or None for the
    tokenizer's own), logs which one it uses and returns that as text, e.g. `tulu` or `the
    tokenizer's own (custom (sha256 ...))`. `source` names the tokenizer in messages."""
    if name is not None and name not in CHOICES:
        raise ConfigError(f"chat_template: {name!r} is not one of {', '.join(CHOICES)}, null")
    own = tokenizer.chat_template
    if name is None or (name == "auto" and own):
        if not own:
            raise ConfigError(
                f"chat_template: null keeps the tokenizer's own template, but {source} has none; "
                f"set chat_template: auto, tulu or olmo"
            )
        used = f"{OWN} ({template_name(own)})"
        if add_bos and not used.endswith("with BOS)"):
            log.warning("%s: add_bos ignored: the tokenizer's own chat template is used as it is", source)
    else:
        install_template(tokenizer, "tulu" if name == "auto" else name, add_bos=add_bos)
        used = template_name(tokenizer.chat_template)
        if own and own != tokenizer.chat_template:
            log.warning(
                "chat template: replacing %s's own chat template (%s) with %s",
                source,
                template_name(own),
                used,
            )
    why = " (the tokenizer has none of its own)" if name == "auto" and not own else ""
    log.info("chat template: %s%s, for chat_template: %s", used, why, "null" if name is None else name)
    return used


def saved_template(model_dir: str | Path) -> str | None:
    """The chat template a saved tokenizer directory holds (`chat_template.jinja`, or the
    `chat_template` of tokenizer_config.json as older transformers wrote it), without loading it."""
    model_dir = Path(model_dir)
    jinja = model_dir / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    config = model_dir / "tokenizer_config.json"
    if config.is_file():
        try:
            return json.loads(config.read_text(encoding="utf-8")).get("chat_template")
        except (OSError, ValueError):
            return None
    return None
