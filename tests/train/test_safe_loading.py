"""Safe loading: safetensors by default, pickle checkpoints refused, remote code off."""

import shutil

import pytest
import torch

from open_instruct.errors import ConfigError
from open_instruct.model.policy import Policy
from open_instruct.train.engine import TrainConfig


def test_pickle_only_checkpoint_is_refused(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    pickled = tmp_path / "pickled"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model.save_pretrained(pickled, safe_serialization=False)
    for f in tiny_model_dir.iterdir():
        if f.name.startswith("tokenizer") or f.name.endswith(".jinja"):
            shutil.copy(f, pickled / f.name)
    for f in pickled.glob("*.safetensors"):
        f.unlink()
    if not list(pickled.glob("*.bin")):  # transformers may refuse to write pickles at all
        torch.save(model.state_dict(), pickled / "pytorch_model.bin")
    with pytest.raises(ConfigError, match="refusing to unpickle"):
        Policy.load(str(pickled))


def test_safetensors_checkpoint_loads_and_remote_code_is_off_by_default(tiny_model_dir):
    policy = Policy.load(str(tiny_model_dir))
    assert policy.model.config.model_type == "llama"
    assert TrainConfig.trust_remote_code is False and TrainConfig.allow_pickle is False
