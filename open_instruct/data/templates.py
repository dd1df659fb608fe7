"""Chat templates as Jinja strings for `tokenizer.chat_template` (REFERENCE.md section 2).

`tulu` (Tülu 3; OLMo 2 is the same with the BOS `<|endoftext|>` in front):

    <|system|>\\n{system}\\n<|user|>\\n{user}\\n<|assistant|>\\n{assistant}{eos}\\n<|user|>\\n...

A non-final assistant turn ends with `{eos}\\n`, the final one with `{eos}`; the generation prompt
is `<|assistant|>\\n`. `olmo` is the ChatML form of OLMo 3: `<|im_start|>{role}\\n{content}<|im_end|>\\n`.

Templates are rendered by the tokenizer itself (`apply_chat_template`), so the model directory
carries its own format to every consumer (the trainer, vLLM, `data inspect`).
"""

from __future__ import annotations

from ..errors import ConfigError

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
