"""The learner side of RLVR: the policy (+ PPO value model) trained by the shared engine, and the frozen
reference, on one process or many (torchrun over one or several nodes; DDP or DeepSpeed ZeRO-2/3).

Process 0 alone drives the vLLM engines and the rewards; `share` hands its scored batch to every
process, `forward_rows` runs a no-grad forward over the batch with each process doing 1/N of the rows
(then all-gather, so every process holds the same advantages), and `weights` gathers the full policy
for the weight sync (every process takes part: ZeRO-3 shards it).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..model.policy import disable_dropout, token_logprobs
from ..model.value import ActorCritic, load_value_model, save_value_model, token_values
from ..train import stage
from ..train.engine import Engine
from .config import RLVRConfig
from .experience import Experience, forward_in_chunks


def _submodule(state_dict: dict, name: str) -> dict:
    """The entries of ActorCritic's `name` part ("policy" / "value"), without the prefix."""
    prefix = name + "."
    return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}


class Learner:
    def __init__(self, cfg: RLVRConfig, tokenizer, num_updates: int):
        self.cfg, self.tokenizer = cfg, tokenizer
        self.out = Path(cfg.output_dir)
        world = int(os.environ.get("WORLD_SIZE", "1"))
        self.engine = Engine(cfg.engine_config(world), self.out, reduction="sum")
        self.policy = stage.load_policy(cfg, tokenizer)
        disable_dropout(self.policy.model)
        # the reference is taken before the engine wraps (and under ZeRO-3 shards) the policy; under any
        # ZeRO stage it is sharded over the processes (every process runs as many reference forwards)
        self.ref = (
            stage.load_reference(cfg, tokenizer, self.engine, self.policy, shard=True)
            if cfg.beta > 0
            else None
        )
        if self.ref is not None:  # under ZeRO-3 it is loaded on its own, not copied from the policy above
            disable_dropout(self.ref)
        value = None
        if cfg.algorithm == "ppo":
            value = load_value_model(
                cfg.value_model_name_or_path or cfg.model_name_or_path,
                dtype=cfg.dtype,
                attn_implementation=cfg.attn_implementation,
                gradient_checkpointing=cfg.gradient_checkpointing,
                trust_remote_code=cfg.trust_remote_code,
                allow_pickle=cfg.allow_pickle,
                pad_token_id=tokenizer.pad_token_id,
            )
            disable_dropout(value)
        self.module = ActorCritic(self.policy.model, value)
        self.engine.prepare(self.module, num_updates)

    # ---- who am I --------------------------------------------------------------------------------
    @property
    def is_main(self) -> bool:
        return self.engine.is_main

    @property
    def world_size(self) -> int:
        return self.engine.world_size

    @property
    def rank(self) -> int:
        return self.engine.process_index

    @property
    def sharded(self) -> bool:
        """Whether full weights must be collected from every process (ZeRO-3 shards them; DDP keeps a
        replica everywhere but all processes still take part in the collective)."""
        return self.world_size > 1 or self.engine.zero3

    def model(self) -> ActorCritic:
        return self.engine.unwrapped()

    # ---- collective helpers ----------------------------------------------------------------------
    def share(self, batch):
        """Process 0's scored batch on every process."""
        return self.engine.broadcast(batch)

    def forward_rows(self, fn, exp: Experience) -> torch.Tensor:
        """`fn(micro_batch) -> [b, t]` over all rows: each process does its 1/N, then all-gather (rank
        order), so every process ends with the whole `[N, T]`."""
        chunk = max(self.cfg.per_device_train_batch_size, 1)
        if self.world_size == 1:
            return forward_in_chunks(fn, exp, chunk)
        per = exp.input_ids.shape[0] // self.world_size
        mine = forward_in_chunks(fn, exp.slice(self.rank * per, (self.rank + 1) * per), chunk)
        return self.engine.accelerator.gather(mine.to(self.engine.device)).cpu()

    def logprobs(self, exp: Experience, reference: bool = False) -> torch.Tensor:
        """Per-token log-probs of the sampled responses under the policy (or the reference) at the
        sampling temperature, as vLLM sampled them."""
        model = self.ref if reference else self.model().policy
        t = self.cfg.temperature
        return self.forward_rows(lambda b: token_logprobs(model, b, temperature=t), exp)

    def values(self, exp: Experience) -> torch.Tensor:
        value = self.model().value
        return self.forward_rows(lambda b: token_values(value, b), exp)

    def policy_weights(self) -> dict | None:
        """The policy's full weights on process 0 (None elsewhere). Every process must call it.

        DDP and ZeRO-2 keep a full replica on every process: process 0 reads its own, no collective.
        ZeRO-3 shards the parameters: they are gathered one at a time (every process takes part; only
        process 0 keeps a CPU copy) and only the policy's -- not the value model's."""
        policy = self.model().policy
        if not self.engine.zero3:
            return policy.state_dict() if self.is_main else None
        import deepspeed

        out = {}
        for name, param in policy.named_parameters():
            with deepspeed.zero.GatheredParameters([param]):
                if self.is_main:
                    out[name] = param.data.detach().to("cpu", copy=True)
        if self.is_main:
            persistent = set(policy.state_dict(keep_vars=True))  # buffers a state_dict would carry
            for name, buf in policy.named_buffers():
                if name in persistent:
                    out[name] = buf.detach().to("cpu", copy=True)
        return out if self.is_main else None

    def sync(self, group) -> float:
        """Sends the policy's weights to every engine (process 0). Every process must call it."""
        import time

        t0 = time.perf_counter()
        weights = self.policy_weights()
        if self.is_main:
            group.sync_weights(weights)
        return time.perf_counter() - t0

    # ---- the end -----------------------------------------------------------------------------------
    def publish(self, summary: dict | None = None) -> str | None:
        """Publishes the policy (and the value model next to it) atomically. Every process must call
        it; returns the digest on process 0."""
        model = self.model()
        full = self.engine.full_state_dict() if self.sharded else None
        digest = None
        if self.is_main:
            self.policy.model = model.policy
            policy_sd = _submodule(full, "policy") if full is not None else None

            value_sd = _submodule(full, "value") if full is not None and model.value is not None else None

            def save(tmp: Path) -> None:
                self.policy.save(tmp, state_dict=policy_sd)
                if model.value is not None:  # in the same atomic publish, covered by the manifest
                    save_value_model(model.value, self.tokenizer, tmp / "value_model", state_dict=value_sd)

            digest = stage.publish(self.out, save, "rlvr", summary)
        self.engine.accelerator.wait_for_everyone()
        return digest
