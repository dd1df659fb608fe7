"""A finished standalone stage is recognised on rerun, also after its output dir was moved; a
different config in the same dir is refused."""

import dataclasses
import shutil

import pytest

from open_instruct.errors import ConfigError
from open_instruct.train import checkpoint as ckpt
from open_instruct.train.loop import write_resolved_config
from open_instruct.train.sft import SFTConfig
from open_instruct.train.stage import already_done


def _finished_run(out, cfg):
    tmp = out.parent / ".tmp-model"
    tmp.mkdir(parents=True)
    (tmp / "model.safetensors").write_bytes(b"w" * 64)
    (tmp / "config.json").write_text("{}")
    ckpt.publish_model(tmp, out)
    write_resolved_config(cfg, out)


def test_finished_stage_is_skipped_even_after_a_move(tmp_path):
    out = tmp_path / "a" / "sft"
    cfg = SFTConfig(model_name_or_path="some/model", dataset_mix="mix.yaml", output_dir=str(out))
    assert already_done(cfg) is False  # nothing there yet
    _finished_run(out, cfg)
    assert already_done(cfg) is True

    moved = tmp_path / "b" / "sft-moved"
    shutil.move(out, moved)
    assert already_done(dataclasses.replace(cfg, output_dir=str(moved))) is True

    changed = dataclasses.replace(cfg, output_dir=str(moved), learning_rate=cfg.learning_rate * 2)
    with pytest.raises(ConfigError, match="different config"):
        already_done(changed)
