"""The PPO value model: the policy's backbone architecture with a scalar head, as a Hugging Face
sequence-classification model so that a reward-model checkpoint (Tülu 3 initialised the value
model from allenai/Llama-3.1-Tulu-3-8B-RM) loads with its trained head, and a plain causal-LM
checkpoint loads with a fresh, zero-initialised head (values start at 0, a neutral baseline)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from ..model.policy import check_safe_weights, configured_dropout, resolve_dtype, token_logprobs

log = logging.getLogger(__name__)


def load_value_model(
    name_or_path: str,
    *,
    dtype: str = "float32",
    attn_implementation: str = "sdpa",
    gradient_checkpointing: bool = False,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    pad_token_id: int | None = None,
) -> nn.Module:
    from transformers import AutoModelForSequenceClassification

    from .lora import full_weights_dir

    check_safe_weights(name_or_path, allow_pickle)
    name_or_path = full_weights_dir(name_or_path)  # a LoRA stage's dir: its merged weights
    model, info = AutoModelForSequenceClassification.from_pretrained(
        name_or_path,
        num_labels=1,
        dtype=resolve_dtype(dtype),
        attn_implementation=attn_implementation,
        trust_remote_code=trust_remote_code,
        use_safetensors=not allow_pickle,
        output_loading_info=True,
    )
    head = _head(model)
    if any(k.startswith(_head_name(model)) for k in info.get("missing_keys", [])):
        with _whole(list(head.parameters())):
            for p in head.parameters():
                nn.init.zeros_(p)
        log.info("value model: %s has no value/reward head; starting from a zero head", name_or_path)
    if pad_token_id is not None:
        model.config.pad_token_id = pad_token_id
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def _whole(params: list):
    """Under ZeRO-3 a loaded model holds only shards: gather these parameters so an in-place change
    applies (process 0's change is scattered back). Elsewhere a no-op. Every process must enter."""
    from contextlib import nullcontext

    from transformers.integrations import is_deepspeed_zero3_enabled

    if not is_deepspeed_zero3_enabled():
        return nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=0)


def _head_name(model) -> str:
    for name in ("score", "classifier", "v_head"):
        if hasattr(model, name):
            return name
    raise ValueError(f"{type(model).__name__}: no scalar head (score/classifier) found")


def _head(model) -> nn.Module:
    return getattr(model, _head_name(model))


def token_values(value_model: nn.Module, batch: dict) -> torch.Tensor:
    """`[B, T]` fp32: at position t the value of the state *before* token t (the same shift as
    log-probs), so values line up with the response tokens they precede."""
    kwargs = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"]}
    if "attention_mask" in batch:
        kwargs["attention_mask"] = batch["attention_mask"]
    hidden = value_model.base_model(**kwargs, use_cache=False).last_hidden_state
    scores = _head(value_model)(hidden).squeeze(-1).float()
    out = torch.zeros(batch["input_ids"].shape, dtype=torch.float32, device=scores.device)
    out[:, 1:] = scores[:, :-1]
    return out


class ActorCritic(nn.Module):
    """Policy and value model as one module, so one engine (one optimizer, one checkpoint, one
    DDP/DeepSpeed wrapper) trains both; `forward` goes through the wrapper, as DDP requires."""

    def __init__(self, policy: nn.Module, value: nn.Module | None):
        super().__init__()
        self.policy = policy
        self.value = value

    def forward(
        self, batch: dict, with_values: bool = True, return_entropy: bool = False, temperature: float = 1.0
    ):
        lp = token_logprobs(self.policy, batch, return_entropy=return_entropy, temperature=temperature)
        values = token_values(self.value, batch) if (with_values and self.value is not None) else None
        return lp, values


def save_value_model(model: nn.Module, tokenizer, out_dir: Path, state_dict: dict | None = None) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    with configured_dropout(model):
        model.save_pretrained(out_dir, state_dict=state_dict, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
