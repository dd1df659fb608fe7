"""Which GPUs a local Ray may give the vLLM engines when the RLVR learner holds some of the node's
GPUs (logic only; the GPU path itself needs a GPU machine)."""

import pytest

from open_instruct.errors import ConfigError
from open_instruct.generation.cluster import engine_gpus
from open_instruct.generation.config import RolloutConfig


def _cfg(**kw):
    return RolloutConfig(model="m", device="cuda", **kw)


def test_engines_get_the_gpus_the_learner_does_not_hold():
    eight = [str(i) for i in range(8)]
    assert engine_gpus(eight, _cfg(learner_gpus=7)) == ["7"]  # Tülu 3 8B PPO: 7 learners + 1 engine
    assert engine_gpus(["2", "3", "5"], _cfg(learner_gpus=1)) == ["3", "5"]  # CUDA_VISIBLE_DEVICES order


def test_shared_gpus_and_cpu_keep_rays_own_view():
    assert engine_gpus(["0"], RolloutConfig(model="m", device="cpu", learner_gpus=1)) is None
    assert engine_gpus(["0", "1"], _cfg(learner_gpus=0)) is None
    assert engine_gpus(["0"], _cfg(learner_gpus=1, num_gpus_per_engine=0.4)) is None  # colocated
    assert engine_gpus(["0"], _cfg(learner_gpus=1, transport="ipc")) is None


def test_no_gpu_left_for_the_engines_is_a_clear_error():
    with pytest.raises(ConfigError, match="hold all 2 visible GPU"):
        engine_gpus(["0", "1"], _cfg(learner_gpus=2))


def test_rlvr_sets_no_learner_gpus_on_a_cpu_machine():
    from open_instruct.config import from_dict
    from open_instruct.rl.config import RLVRConfig

    cfg = from_dict(
        RLVRConfig,
        dict(
            model_name_or_path="m",
            dataset_mix="x.yaml",
            output_dir="o",
            max_train_steps=1,
            rollout={"device": "cuda"},
        ),
    )
    assert cfg.rollout_config().learner_gpus == 0  # no CUDA here: the learner holds no GPU
