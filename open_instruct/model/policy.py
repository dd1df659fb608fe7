"""The one model wrapper every stage uses: the trained policy, the frozen reference, and (with a
scalar head) the PPO value model.

Loading is safe by default: weights come from safetensors, `trust_remote_code` is off, and a
directory holding only pickle weights (`pytorch_model.bin`) is refused unless the user opts in.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import ConfigError

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoraSettings:
    rank: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: str | list[str] = "all-linear"
    save_merged: bool = False  # also publish full merged weights in <out>/merged/
    load_in_4bit: bool = False  # QLoRA: the base in 4-bit NF4 (bitsandbytes, CUDA only)


def resolve_dtype(name: str) -> torch.dtype:
    """`auto` is bf16 where the hardware does it fast (CUDA), else fp32."""
    if name == "auto":
        return (
            torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
        )
    if name not in DTYPES:
        raise ConfigError(f"dtype: {name!r} is not one of auto, {', '.join(DTYPES)}")
    return DTYPES[name]


def check_safe_weights(name_or_path: str, allow_pickle: bool) -> None:
    """Refuses a local directory whose only weights are pickles (they can run arbitrary code)."""
    path = Path(name_or_path)
    if not path.is_dir():
        return  # a hub id: from_pretrained(use_safetensors=True) refuses pickles itself
    has_safe = any(path.glob("*.safetensors"))
    pickles = [p.name for p in path.glob("*.bin")] + [p.name for p in path.glob("*.pt")]
    if not has_safe and pickles and not allow_pickle:
        raise ConfigError(
            f"{path}: only pickle weights ({pickles[0]}); refusing to unpickle an untrusted checkpoint. "
            "Convert it to safetensors, or set allow_pickle: true if you trust its source"
        )


def load_tokenizer(
    name_or_path: str,
    *,
    chat_template: str | None = None,
    add_bos: bool = False,
    trust_remote_code: bool = False,
):
    """The tokenizer, with a pad token. `chat_template` None leaves its template as it is; a name
    (auto, tulu, olmo) is given to data.templates.choose_template, which logs what is used."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    if chat_template:
        from ..data.templates import choose_template

        choose_template(tok, chat_template, add_bos=add_bos, source=name_or_path)
    if tok.pad_token_id is None:
        # A pad distinct from EOS keeps EOS labels trainable in every collator.
        tok.add_special_tokens({"pad_token": "<|pad|>"})
    return tok


def disable_dropout(model: torch.nn.Module) -> torch.nn.Module:
    """Sets every dropout probability to 0 (nn.Dropout modules and the attention dropout HF models read
    from their config): RL compares log-probs of the same tokens across forwards (old vs new policy,
    policy vs reference, learner vs vLLM), and dropout noise in any of them biases ratios and KL."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0
    hf = getattr(model, "module", model)  # a DeepSpeed-wrapped reference: its HF model holds the config
    config = getattr(hf, "config", None)
    if config is not None and not hasattr(config, "__dict__"):
        config = None
    # some models read the config's rate at forward time (Falcon, GPT-Neo), so it is zeroed too; the
    # user's values are kept and put back for every save (`configured_dropout`): a published model
    # carries the config it was given, only training ran without dropout
    saved = dict(getattr(hf, _DROPOUT_SAVED, None) or {})
    for key in list(vars(config)) if config is not None else []:
        value = getattr(config, key)
        if "dropout" in key and isinstance(value, float) and value != 0.0:
            saved[key] = value
            setattr(config, key, 0.0)
    if saved:
        hf.__dict__[_DROPOUT_SAVED] = saved  # a plain attribute: not a parameter, not in the config
    return model


_DROPOUT_SAVED = "_config_dropout_before_disable"


@contextmanager
def configured_dropout(model: torch.nn.Module):
    """The config's dropout values as they were before `disable_dropout`, for the duration of a save."""
    saved = getattr(model, _DROPOUT_SAVED, None) or {}
    config = getattr(model, "config", None)
    if not saved or config is None:
        yield
        return
    for key, value in saved.items():
        setattr(config, key, value)
    try:
        yield
    finally:
        for key in saved:
            setattr(config, key, 0.0)


class Policy:
    """A causal LM plus its tokenizer; `logprobs` is the one forward every loss builds on."""

    def __init__(
        self, model: torch.nn.Module, tokenizer, name_or_path: str = "", lora: LoraSettings | None = None
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.name_or_path = name_or_path
        self.lora = lora  # set when `model` trains a LoRA adapter: how `save` publishes it
        self.resized_embeddings = False  # the tokenizer added tokens: embeddings differ from the base's

    @classmethod
    def load(
        cls,
        name_or_path: str,
        *,
        tokenizer=None,
        dtype: str = "float32",
        attn_implementation: str = "sdpa",
        gradient_checkpointing: bool = False,
        lora: LoraSettings | None = None,
        trust_remote_code: bool = False,
        allow_pickle: bool = False,
        trainable: bool = True,
    ) -> Policy:
        from . import lora as lora_mod

        check_safe_weights(name_or_path, allow_pickle)
        if tokenizer is None:
            tokenizer = load_tokenizer(name_or_path, trust_remote_code=trust_remote_code)
        lora = lora if trainable else None
        source, extra = name_or_path, {}
        if lora is not None and lora.load_in_4bit:  # QLoRA: quantised while loading, from full weights
            source = lora_mod.full_weights_dir(name_or_path)
            extra = lora_mod.quantization_kwargs(resolve_dtype(dtype))
        # a stage dir holding a LoRA adapter loads as its base with the adapter merged in
        model = lora_mod.load_causal_lm(
            source,
            vocab_size=len(tokenizer),
            dtype=resolve_dtype(dtype),
            attn_implementation=attn_implementation,
            trust_remote_code=trust_remote_code,
            use_safetensors=not allow_pickle,
            **extra,
        )
        resized = len(tokenizer) > model.get_input_embeddings().num_embeddings
        if resized:
            model.resize_token_embeddings(len(tokenizer))
        if extra:
            model = lora_mod.prepare_4bit(model, gradient_checkpointing)
        if gradient_checkpointing and trainable:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.config.use_cache = False
        if lora is not None:
            model = lora_mod.apply_lora(model, lora)
        if not trainable:
            model.eval()
            model.requires_grad_(False)
        policy = cls(model, tokenizer, name_or_path, lora=lora)
        policy.resized_embeddings = resized
        return policy

    def frozen_copy(self) -> Policy:
        """A reference model: same weights, no gradients, eval mode."""
        import copy

        model = copy.deepcopy(self.model)
        model.eval()
        model.requires_grad_(False)
        return Policy(model, self.tokenizer, self.name_or_path)

    # ---- forward -------------------------------------------------------------------------
    def logprobs(self, batch: dict, model: torch.nn.Module | None = None, return_entropy: bool = False):
        """Per-token log-prob of `labels[t]` given tokens `< t`, `[B, T]` fp32, 0 where unlabelled.

        `model` lets a caller pass the engine-wrapped (DDP/DeepSpeed) module.
        """
        return token_logprobs(model or self.model, batch, return_entropy=return_entropy)

    # ---- save ------------------------------------------------------------------------------
    def save(self, out_dir: str | Path, state_dict: dict | None = None) -> None:
        """A normal HF checkpoint (safetensors) with tokenizer and chat template; for a LoRA policy the
        PEFT adapter (+ tokenizer), and with `save_merged` full merged weights in `<out_dir>/merged/`."""
        from . import lora as lora_mod

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        if lora_mod.is_peft_model(self.model):
            lora_mod.save_adapter(
                self.model,
                out_dir,
                base=self.name_or_path,
                state_dict=state_dict,
                save_embeddings=self.resized_embeddings,
            )
            self.tokenizer.save_pretrained(out_dir)
            if self.lora is not None and self.lora.save_merged:
                # a 4-bit base merges into the base's own dtype; otherwise the dtype it trained in
                quantized = getattr(self.model, "is_loaded_in_4bit", False)
                dtype = None if quantized else _float_dtype(self.model)
                lora_mod.write_merged(out_dir, out_dir / lora_mod.MERGED, dtype=dtype)
            return
        with configured_dropout(self.model):
            self.model.save_pretrained(out_dir, state_dict=state_dict, safe_serialization=True)
        self.tokenizer.save_pretrained(out_dir)


def _float_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype the model trained in (a 4-bit base's packed weights are not floats)."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def token_logprobs(
    model: torch.nn.Module, batch: dict, return_entropy: bool = False, temperature: float = 1.0
):
    """`[B, T]` log-probs of the labels; with `temperature` the distribution vLLM samples from at that
    temperature (logits / T), which is what RL's importance ratios and KL terms compare."""
    kwargs = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"]}
    if "attention_mask" in batch:
        kwargs["attention_mask"] = batch["attention_mask"]
    logits = model(**kwargs, use_cache=False).logits
    return logprobs_from_logits(
        logits, batch["labels"], return_entropy=return_entropy, temperature=temperature
    )


def logprobs_from_logits(
    logits: torch.Tensor, labels: torch.Tensor, return_entropy: bool = False, temperature: float = 1.0
):
    """Shifted log-probs of `labels` under `logits / temperature`, without materialising a full
    log-softmax copy in fp32 when logits are bf16."""
    shifted = logits[:, :-1]
    if temperature != 1.0:
        shifted = shifted / temperature
    targets = labels[:, 1:]
    mask = targets != -100
    safe = targets.clamp(min=0)
    picked = torch.gather(shifted, -1, safe.unsqueeze(-1)).squeeze(-1).float()
    lse = torch.logsumexp(shifted.float(), dim=-1)
    out = torch.zeros(labels.shape, dtype=torch.float32, device=labels.device)
    out[:, 1:] = (picked - lse) * mask
    if not return_entropy:
        return out
    # the entropy is a metric: computed without autograd so it keeps no fp32 copies of the logits alive
    # for backward (8 bytes per logit at the peak otherwise)
    with torch.no_grad():
        logits32 = shifted.detach().float()
        ent = torch.zeros_like(out)
        ent[:, 1:] = (lse.detach() - (F.softmax(logits32, dim=-1) * logits32).sum(-1)) * mask
    return out, ent
