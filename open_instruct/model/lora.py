"""LoRA the way PEFT users expect it.

A LoRA stage publishes a PEFT adapter: `adapter_config.json` + `adapter_model.safetensors` (+ the
tokenizer) at the top of its output dir, loadable with `PeftModel.from_pretrained(base, dir)`; its
`base_model_name_or_path` is the model the stage started from. With `lora_save_merged` it also
publishes full merged weights in `<dir>/merged/` (a plain HF checkpoint).

Anything that needs a whole model from such a dir goes through here:
- `load_causal_lm`: the next stage's policy / reference (base + adapter, merged in memory; a chain of
  adapter stages is followed down to a full checkpoint);
- `full_weights_dir`: vLLM engines and the PPO value model, which read weights from disk: the dir's
  `merged/`, written on first need when the stage did not publish it.
QLoRA (a 4-bit base via bitsandbytes) is `quantization_kwargs` + `prepare_4bit`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from ..errors import ConfigError

log = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
MERGED = "merged"  # the subfolder holding an adapter dir's full merged weights


def is_adapter_dir(name_or_path: str | Path) -> bool:
    return (Path(name_or_path) / ADAPTER_CONFIG).is_file()


def is_peft_model(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "merge_and_unload")


def adapter_base(adapter_dir: str | Path) -> str:
    """The model an adapter applies to. A local base that is gone but has a same-named sibling of the
    adapter dir is that sibling: a recipe run directory (base/, sft/, dpo/ side by side) that was moved
    still finds its stages' bases."""
    adapter_dir = Path(adapter_dir)
    try:
        base = json.loads((adapter_dir / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{adapter_dir / ADAPTER_CONFIG}: unreadable ({e})") from None
    if not base:
        raise ConfigError(
            f"{adapter_dir / ADAPTER_CONFIG}: no base_model_name_or_path; cannot load the adapter"
        )
    sibling = adapter_dir.parent / Path(base).name
    if Path(base).is_absolute() and not Path(base).exists() and sibling.is_dir() and sibling != adapter_dir:
        log.info("%s: base %s is gone; using %s (the run directory was moved)", adapter_dir, base, sibling)
        return str(sibling)
    return base


def merged_dir(adapter_dir: str | Path) -> Path | None:
    merged = Path(adapter_dir) / MERGED
    return merged if (merged / "config.json").is_file() else None


def config_dir(name_or_path: str) -> str:
    """Where a model's config.json is: an adapter dir's merged weights or, down its chain of bases, the
    first full checkpoint (a hub id as is). Architecture and context length only, no weights."""
    seen = 0
    while is_adapter_dir(name_or_path) and seen < 32:
        merged = merged_dir(name_or_path)
        if merged is not None:
            return str(merged)
        name_or_path, seen = adapter_base(name_or_path), seen + 1
    return str(name_or_path)


def load_causal_lm(name_or_path: str, *, vocab_size: int | None = None, **from_pretrained):
    """A plain `AutoModelForCausalLM`: from a full checkpoint (a dir or hub id), or from an adapter dir
    (its `merged/` when published, else its base -- itself possibly an adapter dir -- with the adapter
    merged in). `vocab_size`: the adapter's tokenizer length; a base with fewer embeddings is resized to
    it first, as the policy was before the adapter was trained."""
    from transformers import AutoModelForCausalLM

    if not is_adapter_dir(name_or_path):
        return AutoModelForCausalLM.from_pretrained(name_or_path, **from_pretrained)
    merged = merged_dir(name_or_path)
    if merged is not None:
        return AutoModelForCausalLM.from_pretrained(merged, **from_pretrained)
    from peft import PeftModel

    if vocab_size is None:
        vocab_size = _tokenizer_len(name_or_path)
    base = load_causal_lm(adapter_base(name_or_path), vocab_size=vocab_size, **from_pretrained)
    if vocab_size > base.get_input_embeddings().num_embeddings:
        base.resize_token_embeddings(vocab_size)
    log.info("%s: merging the LoRA adapter into its base", name_or_path)
    return PeftModel.from_pretrained(base, str(name_or_path)).merge_and_unload()


def _tokenizer_len(adapter_dir: str | Path) -> int:
    from transformers import AutoTokenizer

    return len(AutoTokenizer.from_pretrained(str(adapter_dir)))


def apply_lora(model, lora):
    """Wraps `model` in a fresh PEFT LoRA adapter (`lora`: policy.LoraSettings)."""
    from peft import LoraConfig, get_peft_model

    return get_peft_model(
        model,
        LoraConfig(
            r=lora.rank,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=lora.target_modules,
            task_type="CAUSAL_LM",
        ),
    )


def save_adapter(
    model, out_dir: Path, *, base: str, state_dict: dict | None = None, save_embeddings: bool = False
) -> None:
    """The adapter as PEFT writes it, recording `base` (the model this stage started from) as its base.
    `save_embeddings`: the embedding and output layers were resized for new tokens, so they differ from
    the base's and travel with the adapter (PEFT's `save_embedding_layers`)."""
    local = Path(base)
    for config in model.peft_config.values():
        config.base_model_name_or_path = str(local.resolve()) if local.exists() else base
    model.save_pretrained(
        str(out_dir), state_dict=state_dict, safe_serialization=True, save_embedding_layers=save_embeddings
    )
    # PEFT's template card ("[More Information Needed]"); `open-instruct push` writes the real one
    (Path(out_dir) / "README.md").unlink(missing_ok=True)


def write_merged(adapter_dir: str | Path, dest: Path, dtype=None) -> Path:
    """`adapter_dir`'s base + adapter, merged, saved as a full HF checkpoint (+ tokenizer) in `dest`.
    The base is loaded again unquantized (merging into a 4-bit base would round the result)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(adapter_dir))
    model = load_causal_lm(
        str(adapter_dir), vocab_size=len(tokenizer), dtype=dtype or "auto", use_safetensors=True
    )
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)
    return dest


def full_weights_dir(name_or_path: str) -> str:
    """A directory (or hub id) with full weights for `name_or_path`: itself unless it holds an adapter;
    then its `merged/`, merged now (atomically: written aside, then renamed) if it is not there yet."""
    if not is_adapter_dir(name_or_path):
        return name_or_path
    merged = merged_dir(name_or_path)
    if merged is not None:
        return str(merged)
    final = Path(name_or_path) / MERGED
    tmp = Path(name_or_path) / f".tmp-{MERGED}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    log.info("%s holds a LoRA adapter: writing merged full weights to %s", name_or_path, final)
    try:
        write_merged(name_or_path, tmp)
        os.replace(tmp, final)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if merged_dir(name_or_path) is None:  # not merely another process finishing first
            raise ConfigError(f"{name_or_path}: cannot write merged LoRA weights to {final} ({e})") from None
    return str(final)


# ----------------------------------------------------------------------------- QLoRA

QLORA_INSTALL = "pip install bitsandbytes"


def qlora_unavailable() -> str | None:
    """Why a 4-bit base cannot be loaded here (None when it can): it needs CUDA and bitsandbytes."""
    import importlib.util

    import torch

    if not torch.cuda.is_available():
        return f"this machine has no CUDA GPU (QLoRA runs on the GPU profile; there: {QLORA_INSTALL})"
    if importlib.util.find_spec("bitsandbytes") is None:
        return f"bitsandbytes is not installed ({QLORA_INSTALL})"
    return None


def quantization_kwargs(compute_dtype) -> dict:
    """`from_pretrained` arguments for a QLoRA base: NF4 weights with double quantisation (the QLoRA
    paper's settings), computing in `compute_dtype`, on this process's GPU."""
    import torch
    from transformers import BitsAndBytesConfig

    if compute_dtype == torch.float32:
        compute_dtype = torch.bfloat16  # 4-bit matmuls dequantise to a 16-bit type
    return {
        "quantization_config": BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype,
        ),
        "device_map": {"": int(os.environ.get("LOCAL_RANK", "0"))},
    }


def prepare_4bit(model, gradient_checkpointing: bool):
    """PEFT's preparation of a k-bit base for training (norms in fp32, input grads for checkpointing)."""
    from peft import prepare_model_for_kbit_training

    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
