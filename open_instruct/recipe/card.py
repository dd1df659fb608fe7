"""The model card (README.md) of a pushed model, written from what the run recorded: a recipe stage's
lineage.json chain (base model, every stage's data mixes with their sources, revisions and content
hashes, hyperparameters, held-out numbers), or a standalone stage's resolved_config.yaml. The hub
metadata block (base_model, library_name, datasets, tags) is huggingface_hub's `ModelCardData`."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from ..io import read_json
from ..model.lora import MERGED, adapter_base, is_adapter_dir
from . import lineage as lin
from .stages import STAGE_TYPES

# the settings a reader asks about first, per stage type (the full config ships as lineage.json /
# resolved_config.yaml next to the card)
COMMON_KEYS = (
    "learning_rate",
    "lr_scheduler_type",
    "warmup_ratio",
    "num_train_epochs",
    "max_train_steps",
    "per_device_train_batch_size",
    "total_batch_size",
    "gradient_accumulation_steps",
    "max_seq_length",
    "packing",
    "weight_decay",
    "max_grad_norm",
    "dtype",
    "deepspeed",
    "chat_template",
    "seed",
)
LORA_KEYS = ("lora_rank", "lora_alpha", "lora_dropout", "lora_target_modules", "load_in_4bit")
TYPE_KEYS = {
    "sft": ("loss_reduction",),
    "dpo": ("loss_type", "beta", "label_smoothing", "nll_coef", "reference"),
    "rlvr": (
        "algorithm",
        "beta",
        "kl_estimator",
        "num_unique_prompts_rollout",
        "num_samples_per_prompt_rollout",
        "total_episodes",
        "num_mini_batches",
        "num_epochs",
        "temperature",
        "max_prompt_length",
        "response_length",
        "verification_reward",
    ),
}


def stage_records(stage_dir: Path) -> list[tuple[Path, dict]]:
    """(dir, record) from the first stage to `stage_dir`. A recipe stage follows its lineage's parent
    stages (sibling dirs of one run); a standalone stage is one record made from its own files."""
    chain: list[tuple[Path, dict]] = []
    d = Path(stage_dir)
    while len(chain) < 64:
        rec = lin.read(d)
        if rec is None:
            break
        chain.append((d, rec))
        parent = (rec.get("parent") or {}).get("stage")
        if not parent:
            break
        d = d.parent / parent
    if chain:
        return chain[::-1]
    return [(Path(stage_dir), _standalone_record(Path(stage_dir)))]


def _standalone_record(d: Path) -> dict:
    saved = d / "resolved_config.yaml"
    config = yaml.safe_load(saved.read_text()) if saved.is_file() else {}
    summary = read_json(d / "train_summary.json") or {}
    data = {}
    for role, key in (("train", "dataset_mix"), ("eval", "eval_dataset_mix")):
        mix = config.get(key)
        if mix and Path(mix).exists():
            data[role] = {"path": mix, **lin.mix_fingerprint(mix)}
    return {
        "stage": {"name": d.name, "type": summary.get("stage")},
        "parent": {"name_or_path": config.get("model_name_or_path"), "stage": None},
        "model": {"digest": summary.get("model_digest")},
        "data": data,
        "config": config,
    }


def _sources(mix_path: str) -> list[dict]:
    """The mix's sources as its YAML names them (hub id, subset, split, revision, amount; or a file)."""
    from ..config import to_dict
    from ..data.mixes import read_spec

    try:
        return to_dict(read_spec(Path(mix_path)))["sources"]
    except Exception:  # noqa: BLE001 - the mix file is gone or changed shape: the lineage still has hashes
        return []


def _hub_id(name: str | None) -> str | None:
    """`name` when it reads as a hub id (org/name) and is not a local path."""
    if not name or Path(name).exists() or name.startswith((".", "/", "~")) or name.count("/") != 1:
        return None
    return name


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return str(v)


def _data_lines(role: str, rec: dict) -> list[str]:
    rows = f"{rec['rows']} rows, " if rec.get("rows") is not None else ""
    content = f"content hash `{rec['content_hash']}`, " if rec.get("content_hash") else ""
    out = [f"- data ({role}) `{rec.get('path')}`: {rows}{content}fingerprint `{rec.get('fingerprint')}`"]
    hashes = {f["path"]: f["sha256"] for f in rec.get("files", [])}
    for src in _sources(rec.get("path", "")):
        if src.get("hf"):
            parts = [f"split {src.get('split')}", f"amount {src.get('amount')}"]
            if src.get("subset"):
                parts.insert(0, f"subset {src['subset']}")
            if src.get("revision"):
                parts.append(f"revision `{src['revision']}`")
            out.append(f"  - hub dataset `{src['hf']}` ({', '.join(parts)})")
        elif src.get("path"):
            digest = hashes.get(src["path"])
            out.append(
                f"  - file `{src['path']}` (amount {src.get('amount')}"
                + (f", sha256 `{digest}`)" if digest else ")")
            )
    return out


def _heldout_table(base_dir: Path, chain: list[tuple[Path, dict]]) -> list[str]:
    rows = []
    base_eval = read_json(base_dir / "base_eval.json") if base_dir is not None else None
    if base_eval and "summary" in base_eval:
        rows.append(("base", base_eval["summary"]))
    for d, rec in chain:
        ev = read_json(d / "heldout_eval.json")
        if ev and "summary" in ev:
            rows.append((rec["stage"]["name"], ev["summary"]))
    if not rows:
        return []
    keys = [k for k in rows[-1][1] if isinstance(rows[-1][1][k], (int, float))]
    out = ["| model | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for name, summary in rows:
        out.append(f"| {name} | " + " | ".join(_fmt(summary.get(k, "-")) for k in keys) + " |")
    return out


def model_card(stage_dir: Path, repo_id: str, revision: str | None = None) -> str:
    """README.md for the model published in `stage_dir`, as pushed to `repo_id`."""
    from huggingface_hub import ModelCardData

    stage_dir = Path(stage_dir)
    chain = stage_records(stage_dir)
    first_dir, first = chain[0]
    base = (first.get("parent") or {}).get("name_or_path")
    recipe = first.get("recipe")
    adapter = is_adapter_dir(stage_dir)
    datasets = sorted(
        {
            src["hf"]
            for _, rec in chain
            for d in (rec.get("data") or {}).values()
            for src in _sources(d.get("path", ""))
            if src.get("hf")
        }
    )
    types = [rec["stage"].get("type") for _, rec in chain if rec["stage"].get("type")]
    meta = ModelCardData(
        base_model=_hub_id(base),
        library_name="peft" if adapter else "transformers",
        pipeline_tag="text-generation",
        datasets=datasets or None,
        tags=["open-instruct", *dict.fromkeys(types), *(["lora"] if adapter else [])],
    )
    steps = " → ".join(
        ["base", *(f"{rec['stage']['name']} ({rec['stage'].get('type')})" for _, rec in chain)]
    )
    L = [f"# {repo_id.split('/')[-1]}", ""]
    L.append(f"Post-trained from `{base}` with the open-instruct toolkit: {steps}.")
    if recipe:
        over = f", with `--set {' '.join(recipe['overrides'])}`" if recipe.get("overrides") else ""
        L.append(f"Recipe `{recipe.get('name')}` (sha256 `{recipe.get('sha256')}`){over}.")
    L += ["", *_usage(stage_dir, repo_id, revision, adapter), ""]
    heldout = _heldout_table(first_dir.parent if recipe else None, chain)
    if heldout:
        L += ["## Held-out evaluation", "", *heldout, ""]
    L += ["## Training", ""]
    for d, rec in chain:
        L += _stage_section(d, rec)
    packages = chain[-1][1].get("packages")
    if packages:
        L += ["## Framework versions", ""]
        L += [f"- {name} {version}" for name, version in packages.items() if version]
        git = chain[-1][1].get("git") or {}
        if git.get("commit"):
            L.append(f"- open-instruct commit `{git['commit']}`" + (" (dirty)" if git.get("dirty") else ""))
        L.append("")
    return f"---\n{meta.to_yaml()}\n---\n\n" + "\n".join(L)


def _stage_section(d: Path, rec: dict) -> list[str]:
    stage, cfg = rec["stage"], rec.get("config") or {}
    L = [f"### {stage['name']} ({stage.get('type')})", ""]
    parent = rec.get("parent") or {}
    digest = f" (digest `{parent['digest']}`)" if parent.get("digest") else ""
    L.append(f"- started from `{parent.get('name_or_path')}`{digest}")
    model = rec.get("model") or {}
    if model.get("digest"):
        wall = f", {rec['wall_seconds']:.0f} s" if rec.get("wall_seconds") else ""
        L.append(f"- model digest `{model['digest']}`{wall}")
    for role, data in (rec.get("data") or {}).items():
        L += _data_lines(role, data)
    for name, info in (rec.get("rewards") or {}).items():
        L.append(f"- reward `{name}`: `{info.get('function')}` (source sha256 `{info.get('source_sha256')}`)")
    ev = read_json(d / "eval.json")
    st = STAGE_TYPES.get(stage.get("type") or "")
    if ev and st is not None and st.metric(ev):
        L.append(f"- stage eval: {st.metric(ev)}")
    keys = [*COMMON_KEYS, *(LORA_KEYS if cfg.get("use_lora") else ()), *TYPE_KEYS.get(stage.get("type"), ())]
    shown = [(k, cfg[k]) for k in keys if cfg.get(k) is not None]
    if shown:
        L += ["", "| hyperparameter | value |", "|---|---|", *(f"| {k} | {_fmt(v)} |" for k, v in shown)]
    L.append("")
    return L


def _usage(stage_dir: Path, repo_id: str, revision: str | None, adapter: bool) -> list[str]:
    rev = f', revision="{revision}"' if revision and revision != "main" else ""
    code = [
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}"{rev})',
    ]
    lines = ["## Use", ""]
    if not adapter:
        code.append(f'model = AutoModelForCausalLM.from_pretrained("{repo_id}"{rev})')
    else:
        base = adapter_base(stage_dir)
        manifest = read_json(stage_dir / "model_manifest.json") or {}
        merged = f"{MERGED}/config.json" in manifest.get("files", {})  # published with the adapter
        local = _hub_id(base) is None
        lines += [
            f"This repository holds a LoRA adapter (PEFT) for `{base}`"
            + (" (a local model where it was trained)" if local else "")
            + (f"; full merged weights are in `{MERGED}/`." if merged else "."),
            "",
        ]
        peft = [
            f'base = AutoModelForCausalLM.from_pretrained("{base}")',
            "base.resize_token_embeddings(len(tokenizer))  # when the tokenizer gained a pad token",
            f'model = PeftModel.from_pretrained(base, "{repo_id}"{rev})',
        ]
        if merged:
            code.append(
                f'model = AutoModelForCausalLM.from_pretrained("{repo_id}", subfolder="{MERGED}"{rev})'
            )
            code += ["# or the adapter on its base (from peft import PeftModel):", *(f"# {c}" for c in peft)]
        else:
            code = [*code[:2], "from peft import PeftModel", *code[2:], *peft]
    code += [
        "",
        'messages = [{"role": "user", "content": "Write a haiku about autumn."}]',
        "inputs = tokenizer.apply_chat_template(",
        '    messages, add_generation_prompt=True, return_tensors="pt", return_dict=True',
        ")",
        "out = model.generate(**inputs, max_new_tokens=64)",
        'print(tokenizer.decode(out[0][inputs["input_ids"].shape[1] :], skip_special_tokens=True))',
        "```",
    ]
    return lines + code
