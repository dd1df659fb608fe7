"""Golden renderings of the chat templates (REFERENCE.md section 2)."""

import pytest
from transformers import AutoTokenizer

from open_instruct.data.templates import GENERATION_PROMPTS, get_template, install_template
from open_instruct.errors import ConfigError

EOS = "<|endoftext|>"
SYSTEM = {"role": "system", "content": "You are helpful."}
U1 = {"role": "user", "content": "What is 47 + 85?"}
A1 = {"role": "assistant", "content": "7+5=12, 4+8+1=13. The answer is 132."}
U2 = {"role": "user", "content": "And 10 + 10?"}
A2 = {"role": "assistant", "content": "0+0=0, 1+1=2. The answer is 20."}


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def _render(tok, name, messages, add_bos=False, gen=False):
    install_template(tok, name, add_bos=add_bos)
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)


def test_tulu_multi_turn_with_system(tok):
    got = _render(tok, "tulu", [SYSTEM, U1, A1, U2, A2])
    assert got == (
        "<|system|>\nYou are helpful.\n<|user|>\nWhat is 47 + 85?\n<|assistant|>\n"
        f"7+5=12, 4+8+1=13. The answer is 132.{EOS}\n<|user|>\nAnd 10 + 10?\n<|assistant|>\n"
        f"0+0=0, 1+1=2. The answer is 20.{EOS}"
    )


def test_tulu_without_system(tok):
    assert (
        _render(tok, "tulu", [U1, A1]) == f"<|user|>\nWhat is 47 + 85?\n<|assistant|>\n{A1['content']}{EOS}"
    )


def test_tulu_generation_prompt(tok):
    got = _render(tok, "tulu", [SYSTEM, U1, A1, U2], gen=True)
    assert got == (
        "<|system|>\nYou are helpful.\n<|user|>\nWhat is 47 + 85?\n<|assistant|>\n"
        f"{A1['content']}{EOS}\n<|user|>\nAnd 10 + 10?\n<|assistant|>\n"
    )
    assert got.endswith(GENERATION_PROMPTS["tulu"])
    # Without the generation prompt a trailing user turn ends with its newline.
    assert _render(tok, "tulu", [U1]) == "<|user|>\nWhat is 47 + 85?\n"


def test_tulu_with_bos_is_olmo2(tok):
    assert _render(tok, "tulu", [U1, A1], add_bos=True) == (
        f"{EOS}<|user|>\nWhat is 47 + 85?\n<|assistant|>\n{A1['content']}{EOS}"
    )
    assert (
        _render(tok, "tulu", [U1], add_bos=True, gen=True)
        == f"{EOS}<|user|>\nWhat is 47 + 85?\n<|assistant|>\n"
    )


def test_olmo_chatml(tok):
    got = _render(tok, "olmo", [SYSTEM, U1, A1, U2, A2])
    assert got == (
        "<|im_start|>system\nYou are helpful.<|im_end|>\n"
        "<|im_start|>user\nWhat is 47 + 85?<|im_end|>\n"
        f"<|im_start|>assistant\n{A1['content']}<|im_end|>\n"
        "<|im_start|>user\nAnd 10 + 10?<|im_end|>\n"
        f"<|im_start|>assistant\n{A2['content']}<|im_end|>\n"
    )
    assert _render(tok, "olmo", [U1], gen=True) == (
        "<|im_start|>user\nWhat is 47 + 85?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert _render(tok, "olmo", [U1], add_bos=True).startswith(EOS + "<|im_start|>user\n")


def test_role_tokens_are_single_tokens(tok):
    install_template(tok, "tulu")
    for special in ["<|system|>", "<|user|>", "<|assistant|>", "<|im_start|>", "<|im_end|>", EOS]:
        assert len(tok(special, add_special_tokens=False)["input_ids"]) == 1


def test_unknown_template_is_a_config_error():
    with pytest.raises(ConfigError, match="'chatml' is not one of olmo, tulu"):
        get_template("chatml")
