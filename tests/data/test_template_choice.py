"""A stage's `chat_template`: `auto` (the default) keeps a tokenizer's own template and falls back to
tulu; tulu/olmo replace another template with a warning naming both; null requires the tokenizer's
own. The choice is made before any cache key is computed from the tokenizer, logged, and recorded in
lineage.json."""

import json
import logging
import shutil

import pytest
from transformers import AutoTokenizer

from open_instruct.data.templates import get_template, saved_template, template_name
from open_instruct.data.tokenize import tokenizer_fingerprint
from open_instruct.errors import ConfigError
from open_instruct.train.config import SFTConfig
from open_instruct.train.stage import load_stage_tokenizer


@pytest.fixture
def tok_dirs(tiny_model_dir, tmp_path_factory):
    """The tiny tokenizer saved three ways: with no chat template, with olmo (ChatML), and as built (tulu)."""
    root = tmp_path_factory.mktemp("toks")
    out = {"tulu": tiny_model_dir}
    for name, template in (("none", None), ("olmo", get_template("olmo"))):
        tok = AutoTokenizer.from_pretrained(tiny_model_dir)
        tok.chat_template = template
        tok.save_pretrained(root / name)
        out[name] = root / name
    assert AutoTokenizer.from_pretrained(out["none"]).chat_template is None
    return out


def _cfg(path, **kw) -> SFTConfig:
    return SFTConfig(model_name_or_path=str(path), dataset_mix="m.jsonl", output_dir="o", **kw)


def _lines(caplog, level):
    return [r.getMessage() for r in caplog.records if r.levelno == level and r.name.endswith("templates")]


def test_auto_is_the_default_and_keeps_the_tokenizers_own(tok_dirs, caplog):
    cfg = _cfg(tok_dirs["olmo"])
    assert cfg.chat_template == "auto"
    with caplog.at_level(logging.INFO):
        tok = load_stage_tokenizer(cfg)
    assert tok.chat_template == get_template("olmo")
    assert _lines(caplog, logging.INFO) == [
        "chat template: the tokenizer's own (olmo), for chat_template: auto"
    ]
    assert _lines(caplog, logging.WARNING) == []


def test_auto_without_a_template_of_its_own_uses_tulu(tok_dirs, caplog):
    with caplog.at_level(logging.INFO):
        tok = load_stage_tokenizer(_cfg(tok_dirs["none"]))
    assert tok.chat_template == get_template("tulu")
    assert _lines(caplog, logging.INFO) == [
        "chat template: tulu (the tokenizer has none of its own), for chat_template: auto"
    ]
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == "<|user|>\nhi\n"


def test_replacing_a_template_is_a_warning_naming_both(tok_dirs, caplog):
    with caplog.at_level(logging.INFO):
        tok = load_stage_tokenizer(_cfg(tok_dirs["olmo"], chat_template="tulu", add_bos=True))
    assert tok.chat_template == get_template("tulu", add_bos=True)
    assert _lines(caplog, logging.WARNING) == [
        f"chat template: replacing {tok_dirs['olmo']}'s own chat template (olmo) with tulu with BOS"
    ]
    caplog.clear()
    with caplog.at_level(logging.INFO):  # the same template again: nothing is replaced
        load_stage_tokenizer(_cfg(tok_dirs["tulu"], chat_template="tulu"))
    assert _lines(caplog, logging.WARNING) == []
    assert _lines(caplog, logging.INFO) == ["chat template: tulu, for chat_template: tulu"]


def test_null_requires_a_template_of_its_own(tok_dirs):
    assert load_stage_tokenizer(_cfg(tok_dirs["olmo"], chat_template=None)).chat_template == get_template(
        "olmo"
    )
    with pytest.raises(ConfigError) as err:
        load_stage_tokenizer(_cfg(tok_dirs["none"], chat_template=None))
    assert str(err.value) == (
        f"chat_template: null keeps the tokenizer's own template, but {tok_dirs['none']} has none; "
        "set chat_template: auto, tulu or olmo"
    )


def test_bad_value_is_a_one_line_config_error():
    with pytest.raises(
        ConfigError, match=r"^sft\.chat_template: 'chatml' is not one of auto, tulu, olmo, null$"
    ):
        _cfg("m", chat_template="chatml").validate("sft")


def test_cache_keys_see_the_resolved_template(tok_dirs):
    """Tokenisation cache keys (and DPO's reference-cache key, which includes the same fingerprint) are
    computed from the tokenizer after `auto` is resolved: auto that falls back to tulu keys like tulu;
    auto that keeps another template keys differently."""
    fallback = tokenizer_fingerprint(load_stage_tokenizer(_cfg(tok_dirs["none"])))
    assert fallback == tokenizer_fingerprint(
        load_stage_tokenizer(_cfg(tok_dirs["none"], chat_template="tulu"))
    )
    kept = tokenizer_fingerprint(load_stage_tokenizer(_cfg(tok_dirs["olmo"])))
    assert kept != tokenizer_fingerprint(load_stage_tokenizer(_cfg(tok_dirs["olmo"], chat_template="tulu")))


def test_template_names_and_saved_templates(tok_dirs, tmp_path):
    assert [template_name(saved_template(tok_dirs[k])) for k in ("tulu", "olmo", "none")] == [
        "tulu",
        "olmo",
        "none",
    ]
    assert template_name(get_template("tulu", add_bos=True)) == "tulu with BOS"
    assert template_name("{{ messages }}").startswith("custom (sha256 ")
    # older transformers kept the template in tokenizer_config.json
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": get_template("olmo")}))
    assert template_name(saved_template(tmp_path)) == "olmo"


def test_lineage_records_the_template(tok_dirs, tmp_path, tiny_model_dir, samples_dir, monkeypatch):
    from open_instruct.recipe import lineage as lin
    from open_instruct.recipe.load import load_plan
    from open_instruct.train.checkpoint import model_digest, publish_model

    monkeypatch.chdir(tmp_path)
    stage = {"name": "sft", "type": "sft", "dataset_mix": str(samples_dir / "sft_eval.jsonl")}
    (tmp_path / "r.yaml").write_text(
        json.dumps({"name": "t", "base_model": str(tiny_model_dir), "stages": [stage]})
    )
    plan = load_plan(tmp_path / "r.yaml", [], str(tmp_path / "out"))
    sp = plan.stages[0]
    shutil.copytree(tok_dirs["olmo"], tmp_path / "model")  # the published tokenizer holds olmo
    for f in ("config.json", "model.safetensors"):
        shutil.copy(tiny_model_dir / f, tmp_path / "model" / f)
    digest = publish_model(tmp_path / "model", sp.out)
    rec = lin.finished_record(plan, sp, model_digest(str(tiny_model_dir)), digest, lin.now(), 1.0)
    assert rec["template"] == {"chat_template": "auto", "add_bos": False, "used": "olmo"}
