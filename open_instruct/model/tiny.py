"""Tiny offline models: a byte-level BPE tokenizer trained on generated text plus a randomly
initialised Llama or OLMo 2, saved as a normal HF directory (loadable by transformers and vLLM).

Tests and the demo cannot reach the model hub, so they build one of these instead; real recipes
use hub ids through the same `from_pretrained` calls. Same arguments -> byte-identical files.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from ..data.templates import install_template

EOS = "<|endoftext|>"  # also BOS, as in the Tülu 3 / OLMo 2 tokenizers
PAD = "<|pad|>"  # distinct from EOS, so padding can never be mistaken for an end of turn
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>", "<|im_start|>", "<|im_end|>"]
SPECIAL_TOKENS = [EOS, PAD, *ROLE_TOKENS]
MAX_POSITIONS = 512

_WORDS = (
    "the a an of to and in is it that for on with as was he she they we you this be at by not are "
    "from or have had one all there what when which their can said will each about how if up out many "
    "then them these so some her would make like him into time has look two more write go see number "
    "way could people my than first water been call who oil its now find long down day did get come "
    "made may part answer question sum add plus total carry digit result step solve problem explain "
    "because first second next finally please short story poem letter word sentence paragraph title "
    "response english language capital lowercase comma bullet section friend city river mountain book "
    "school teacher student apple orange market money price buy sell give take each every only also"
).split()


def _arithmetic_line(rng: random.Random) -> str:
    # Mirrors the toy task (scripts/make_samples.py) so its strings become cheap tokens.
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    u = a % 10 + b % 10
    carry = u // 10
    t = a // 10 + b // 10 + carry
    tens = f"{a // 10}+{b // 10}+1={t}" if carry else f"{a // 10}+{b // 10}={t}"
    return f"What is {a} + {b}? {a % 10}+{b % 10}={u}, {tens}. The answer is {a + b}."


def _english_line(rng: random.Random) -> str:
    n = rng.randint(5, 16)
    words = [rng.choice(_WORDS) for _ in range(n)]
    words[0] = words[0].capitalize()
    return " ".join(words) + rng.choice([".", ".", "?", "!", ","])


def training_corpus(seed: int = 0, lines: int = 6000) -> list[str]:
    """Generated text the BPE is trained on: half toy arithmetic, half English-ish word salad."""
    rng = random.Random(seed)
    out = []
    for i in range(lines):
        out.append(_arithmetic_line(rng) if i % 2 == 0 else _english_line(rng))
    return out


def build_tokenizer(vocab_size: int = 512, seed: int = 0, add_bos: bool = False):
    """A `PreTrainedTokenizerFast` (byte-level BPE, digits split into single tokens, tulu template)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    # Digits first (one token per digit, as the toy task's worked solutions need), then GPT-2 style
    # byte-level splitting; no prefix space so that `tok(a + b) == tok(a) + tok(b)` at turn boundaries.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(training_corpus(seed), trainer)

    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=ROLE_TOKENS,
        model_max_length=MAX_POSITIONS,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
    return install_template(hf, "tulu", add_bos=add_bos)


def build_tiny(
    out_dir: str | Path,
    arch: str = "llama",
    seed: int = 0,
    hidden: int = 128,
    layers: int = 4,
    heads: int = 4,
    kv_heads: int = 2,
    ffn: int = 512,
    vocab_size: int = 512,
) -> Path:
    """Builds tokenizer + random `arch` model into `out_dir` and returns it.

    `arch="olmo2"` installs the tulu template with the BOS in front, as OLMo 2 Instruct does.
    """
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, Olmo2Config, Olmo2ForCausalLM

    if arch not in ("llama", "olmo2"):
        raise ValueError(f"arch {arch!r} is not one of llama, olmo2")
    sizes = dict(hidden=hidden, layers=layers, heads=heads, kv_heads=kv_heads, ffn=ffn, vocab_size=vocab_size)
    for name, value in sizes.items():
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if hidden % heads or heads % kv_heads:
        raise ValueError(f"hidden {hidden} must divide by heads {heads}, and heads by kv_heads {kv_heads}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    tokenizer = build_tokenizer(vocab_size=vocab_size, seed=seed, add_bos=arch == "olmo2")
    ids = dict(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=ffn,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=MAX_POSITIONS,
        tie_word_embeddings=False,
        **ids,
    )
    config = LlamaConfig(**common) if arch == "llama" else Olmo2Config(**common)
    config.dtype = torch.float32
    torch.manual_seed(seed)
    cls = LlamaForCausalLM if arch == "llama" else Olmo2ForCausalLM
    model = cls(config).to(torch.float32).eval()
    model.generation_config = GenerationConfig(**ids)

    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def add_tiny_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("tiny", help="build a tiny random model + tokenizer offline")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--arch", choices=["llama", "olmo2"], default="llama")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--ffn", type=int, default=512)
    p.add_argument("--vocab-size", type=int, default=512)
    p.set_defaults(func=tiny_command)
    return p


def check_out_dir(out: Path) -> None:
    """`tiny --out` is a new or empty dir, or a model dir to rebuild; never a file, nor a dir holding
    other things (the model's files would land among them)."""
    from ..errors import ConfigError

    for q in (out, *out.parents):
        if q.exists() and not q.is_dir():
            inside = "" if q == out else f" (a parent of {out})"
            raise ConfigError(f"tiny --out: {q} is a file{inside}; give a directory")
        if q.exists():
            break
    if out.is_dir() and any(out.iterdir()) and not (out / "config.json").is_file():
        raise ConfigError(
            f"tiny --out: {out} is a non-empty directory that holds no model; give a new or empty directory"
        )


def tiny_command(args) -> int:
    from ..errors import ConfigError

    check_out_dir(Path(args.out).expanduser())
    try:
        out = build_tiny(
            args.out,
            arch=args.arch,
            seed=args.seed,
            hidden=args.hidden,
            layers=args.layers,
            heads=args.heads,
            kv_heads=args.kv_heads,
            ffn=args.ffn,
            vocab_size=args.vocab_size,
        )
    except ValueError as e:
        raise ConfigError(f"tiny: {e}") from None
    print(f"wrote tiny {args.arch} model and tokenizer to {out}")
    return 0
