"""RLVR stage: reinforcement learning with verifiable rewards, PPO (Tülu 3) or GRPO (Tülu 3.1).

    open-instruct rlvr --config rlvr.yaml [--set key=value ...]
    torchrun --nnodes N --nproc_per_node P ... -m open_instruct.cli rlvr --config rlvr.yaml

One RL step, as `run_rlvr` and `learn` read top to bottom:
  prompts (seeded order, resumable) -> vLLM engines in Ray actors -> completions
  -> reward_fns (verifier by the row's `dataset`) -> score x verification_reward, non-EOS penalty
  -> learner forwards (old log-probs, reference log-probs, values) -> advantages (GAE or GRPO groups)
  -> K epochs x M mini-batches of clipped updates -> weight sync to every engine.
The plumbing lives elsewhere: the learner processes in learner.py, the step loop (resume, metrics,
checkpoints) in train/loop.py, generation and scoring in generation/, the losses and advantages as
pure functions in losses.py and advantages.py.
"""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from ..config import load_config
from ..errors import ConfigError
from ..train import stage
from ..train.engine import BatchPlan, LossOut
from ..train.loop import StepLoop
from . import advantages as adv
from . import losses as L
from .config import RLVRConfig
from .experience import build_experience
from .learner import Learner

log = logging.getLogger(__name__)

__all__ = ["RLVRConfig", "build_experience", "learn", "make_loss_fn", "run_rlvr"]


# ---------------------------------------------------------------------------------------------------
# the loss of one micro-batch


def make_loss_fn(cfg: RLVRConfig):
    def loss_fn(model, mb: dict) -> LossOut:
        batch = {k: mb[k] for k in ("input_ids", "attention_mask", "position_ids", "labels")}
        mask = mb["labels"] != -100
        units = float(mask.sum())
        (lp, ent), values = model(
            batch, with_values=cfg.algorithm == "ppo", return_entropy=True, temperature=cfg.temperature
        )
        if cfg.algorithm == "ppo":
            pg = L.ppo_policy_loss(
                lp, mb["old_logp"], mb["advantages"], mask, cfg.cliprange, agg="token", token_normalizer=1.0
            )
            vf = L.value_loss(
                values,
                mb["values"],
                mb["returns"],
                mask,
                cfg.cliprange_value,
                agg="token",
                token_normalizer=1.0,
            )
            total = pg.loss + cfg.vf_coef * vf.loss
            metrics = {
                "policy_loss": float(pg.loss.detach()),
                "value_loss": float(vf.loss.detach()),
                "clip_fraction": float(pg.clip_fraction) * units,
                "value_clip_fraction": float(vf.clip_fraction) * units,
                "approx_kl": float(pg.approx_kl) * units,
            }
        else:
            out = L.grpo_loss(
                lp,
                mb["old_logp"] if "old_logp" in mb else lp.detach(),  # a single update: see `learn`
                mb.get("ref_logp"),
                mb["advantages"],
                mask,
                cfg.cliprange,
                cfg.beta,
                kl_estimator=cfg.estimator,
                agg="token",
                token_normalizer=1.0,
            )
            total = out.loss
            metrics = {
                "policy_loss": float(out.policy_loss.detach()),
                "clip_fraction": float(out.clip_fraction) * units,
                "approx_kl": float(out.approx_kl) * units,
                "kl_loss": float(out.kl.detach()),
            }
        metrics["entropy"] = float(L.masked_sum(ent.detach(), mask))
        return LossOut(total=total, units=units, metrics=metrics)

    return loss_fn


# ---------------------------------------------------------------------------------------------------
# rollouts: generate and score (process 0)


def sampling_params(cfg: RLVRConfig, step: int) -> dict:
    s = {
        "n": cfg.num_samples_per_prompt_rollout,
        "temperature": cfg.temperature,
        "top_p": cfg.top_p,
        "max_tokens": cfg.response_length,
        "seed": (cfg.seed * 1_000_003 + step * 7919) % (2**31),
    }
    if cfg.stop_strings:
        s["stop"] = list(cfg.stop_strings)
    return s


def rollout(cfg: RLVRConfig, group, tokenizer, rewards, rows: list[dict], step: int) -> dict:
    """Process 0: the generated, scored batch as plain data (broadcast to the other learner processes)."""
    from ..generation.sample import sample_and_score

    batch = sample_and_score(group, tokenizer, rows, rewards, sampling_params(cfg, step))
    gen = batch.generation
    return {
        "prompts": [list(batch.row_of(k)["prompt_input_ids"]) for k in range(len(batch.completions))],
        "responses": [list(c.token_ids) for c in batch.completions],
        "stopped": [c.stopped for c in batch.completions],
        "scores": batch.scores,
        "stats": {
            **batch.reward_metrics,
            "reward_seconds": batch.reward_seconds,
            "gen_tokens_per_s": gen.tokens_per_second,
            "gen_seconds": gen.seconds,
            "engine_restarts": gen.restarts,
        },
    }


# ---------------------------------------------------------------------------------------------------
# the algorithm: one batch of experience -> advantages -> K epochs x M mini-batches of updates


def learn(cfg: RLVRConfig, learner: Learner, batch: dict, step: int, loss_fn) -> dict:
    n = cfg.num_samples_per_prompt_rollout
    scores = torch.tensor(batch["scores"], dtype=torch.float32)
    finished = torch.tensor(batch["stopped"])
    exp = build_experience(batch["prompts"], batch["responses"], learner.tokenizer.pad_token_id)
    mask = exp.mask
    learner.module.eval()
    # One GRPO update on fresh samples with no reference: the policy that generated the batch is the one
    # being updated, so its log-probs come free from the update's own forward (detached) and a whole
    # no-grad pass over the batch is skipped (TRL does the same when num_iterations is 1).
    single_update = (
        cfg.algorithm == "grpo" and cfg.num_epochs == 1 and cfg.num_mini_batches == 1 and learner.ref is None
    )
    if not single_update:
        exp.old_logp = learner.logprobs(exp)
    exp.ref_logp = learner.logprobs(exp, reference=True) if learner.ref is not None else exp.old_logp
    penalty = cfg.penalty_reward_value if cfg.non_stop_penalty else None

    if cfg.algorithm == "ppo":
        exp.values = learner.values(exp)
        shaped = adv.shape_rewards(
            scores,
            finished,
            mask,
            exp.old_logp,
            exp.ref_logp,
            kl_beta=cfg.beta,
            verification_reward=cfg.verification_reward,
            non_eos_penalty=penalty,
            kl_estimator=cfg.estimator,
        )
        advantages, exp.returns = adv.gae(shaped.rewards, exp.values * mask, mask, cfg.gamma, cfg.lam)
        if cfg.whiten_advantages:
            advantages = adv.whiten(advantages, mask)
        exp.advantages = advantages * mask
        seq_kl = shaped.seq_kl
        final = None
    else:
        final = scores * cfg.verification_reward
        if penalty is not None:
            final = torch.where(finished, final, torch.full_like(final, penalty))
        per_seq = adv.grpo_advantages(final, n, normalize_std=cfg.grpo_normalize_std)
        exp.advantages = per_seq[:, None] * mask  # every token of a response shares its advantage
        seq_kl = (
            torch.zeros(mask.shape[0])  # no reference: KL 0 by definition
            if exp.ref_logp is None or exp.old_logp is None
            else L.masked_sum(L.kl_estimate(exp.old_logp, exp.ref_logp, "k1"), mask, dim=-1)
        )

    # K epochs x M mini-batches, each one optimizer step of micro-batches (this process: its 1/N)
    total = exp.input_ids.shape[0]
    mini = total // cfg.num_mini_batches
    per_proc = mini // learner.world_size
    chunk = cfg.per_device_train_batch_size
    t_train = time.perf_counter()
    sums: dict[str, float] = {}
    grad_norms = []
    for epoch in range(cfg.num_epochs):
        order = np.random.default_rng([cfg.seed, step, epoch]).permutation(total)
        for m in range(cfg.num_mini_batches):
            mine = order[m * mini : (m + 1) * mini][learner.rank * per_proc : (learner.rank + 1) * per_proc]
            micro = [exp.rows(sorted(mine[s : s + chunk].tolist())) for s in range(0, per_proc, chunk)]
            out = learner.engine.step(micro, loss_fn)
            grad_norms.append(out.get("grad_norm"))
            for k, v in out.items():
                sums[k] = sums.get(k, 0.0) + v
    train_seconds = time.perf_counter() - t_train
    updates = cfg.num_epochs * cfg.num_mini_batches

    kept = (
        "policy_loss",
        "value_loss",
        "clip_fraction",
        "value_clip_fraction",
        "approx_kl",
        "entropy",
        "kl_loss",
        "grad_norm",
        "lr",
    )
    metrics = {k: v / updates for k, v in sums.items() if k in kept}
    metrics.update(
        {
            "reward_mean": float(scores.mean()),
            "non_eos_rate": float((~finished).float().mean()),
            "kl": float(seq_kl.mean()),
            "response_length": float(mask.sum(-1).float().mean()),
            "train_tokens_per_s": int(exp.attention_mask.sum()) * cfg.num_epochs / train_seconds,
            **batch["stats"],
        }
    )
    if n > 1:
        # groups whose rewards all tie carry no GRPO signal (and a constant baseline for PPO)
        group_scores = (final if final is not None else scores).view(-1, n)
        metrics["tied_group_fraction"] = float(
            (group_scores.max(1).values == group_scores.min(1).values).float().mean()
        )
    metrics["zero_advantage"] = float(not bool(exp.advantages.abs().gt(0).any()))
    if cfg.algorithm == "ppo":
        metrics["explained_variance"] = float(L.explained_variance(exp.values, exp.returns, mask))
    no_grad = all(g is not None and g == 0 for g in grad_norms)
    metrics["no_signal"] = float(metrics["zero_advantage"] == 1.0 or no_grad)
    return metrics


# ---------------------------------------------------------------------------------------------------
# data and rewards


def load_prompts(cfg: RLVRConfig, tokenizer, mix: str):
    """Tokenised prompts; every row's verifier must exist and accept its label (user rewards loaded)."""
    from ..data.mixes import load_mix
    from ..data.tokenize import tokenize_data
    from ..generation.evaluate import label_check

    loaded = load_mix(mix, kind="rlvr", label_check=label_check)
    return tokenize_data(loaded, tokenizer, "rlvr", max_prompt_length=cfg.max_prompt_length)


def make_rewards(cfg: RLVRConfig, datasets) -> object:
    """The reward runner (user modules load here, so a bad spec fails now) after checking that every
    verifier named by the prompts' `dataset` column exists."""
    from ..generation.evaluate import check_verifiers, reward_runner

    runner = reward_runner(cfg.reward_modules, timeout_s=cfg.reward_timeout_s, num_workers=cfg.reward_workers)
    try:
        for data in datasets:
            check_verifiers([{"dataset": d} for d in data.dataset.unique("dataset")], cfg.dataset_mix)
    except Exception:
        runner.close()
        raise
    return runner


def evaluate(cfg: RLVRConfig, group, tokenizer, rewards, eval_data) -> dict:
    from ..data.examples import take
    from ..generation.evaluate import evaluate_rows

    n = len(eval_data.dataset) if not cfg.eval_limit else min(cfg.eval_limit, len(eval_data.dataset))
    sampling = {
        "n": 1,
        "temperature": cfg.eval_temperature,
        "max_tokens": cfg.response_length,
        "seed": cfg.seed,
    }
    res = evaluate_rows(group, tokenizer, take(eval_data.dataset, range(n)), rewards, sampling)
    return {f"eval/{k}": v for k, v in res.summary().items() if isinstance(v, (int, float))}


def preflight(cfg: RLVRConfig, learner: Learner, group, rows: list[dict]) -> None:
    """The engines and the learner must agree on log-probs before training starts. Process 0 samples
    and judges. Under ZeRO-3 over several processes every learner forward needs all of them (each holds
    a shard of every layer), so every process must call it: process 0's sample is broadcast and every
    process scores all of it."""
    from .preflight import engine_sample, hf_logprob_fn, judge

    everyone = learner.world_size > 1 and learner.engine.zero3
    if not (learner.is_main or everyone):
        return
    sample = None
    if learner.is_main:
        sampling = {"temperature": 1.0, "max_tokens": min(32, cfg.response_length), "n": 1, "seed": cfg.seed}
        sample = engine_sample(group, [r["prompt_input_ids"] for r in rows], sampling)
    if everyone:
        sample = learner.share(sample)
    policy = learner.model().policy
    learner_lp = hf_logprob_fn(policy, pad_id=learner.tokenizer.pad_token_id)(sample.sequences)
    if learner.is_main:
        report = judge(
            sample,
            learner_lp,
            max_kl=cfg.preflight_max_kl,
            engine_dtype=group.cfg.dtype,
            learner_dtype=str(next(policy.parameters()).dtype),
        )
        log.info("rlvr preflight: %s", report.line())


# ---------------------------------------------------------------------------------------------------
# the stage


def run_rlvr(cfg: RLVRConfig) -> Path:
    from ..data.examples import take
    from ..generation.group import RolloutGroup
    from ..track import read_metrics

    out = Path(cfg.output_dir)
    if stage.already_done(cfg):
        return out
    stage.check_sources(cfg)  # every model it loads is there: one line, before anything heavy
    from ..generation.evaluate import load_reward_modules

    tokenizer = stage.load_stage_tokenizer(cfg)
    load_reward_modules(cfg.reward_modules)  # the prompts' rows may name them
    data = load_prompts(cfg, tokenizer, cfg.dataset_mix)  # bad data fails before any model is loaded
    eval_data = load_prompts(cfg, tokenizer, cfg.eval_dataset_mix) if cfg.eval_dataset_mix else None
    plan = BatchPlan(len(data.dataset), cfg.num_unique_prompts_rollout, np.inf, cfg.seed, cfg.num_rl_steps)
    if plan.steps_per_epoch == 0:
        raise ConfigError(
            f"{cfg.dataset_mix}: {len(data.dataset)} prompts (after the length limits), fewer than "
            f"num_unique_prompts_rollout={cfg.num_unique_prompts_rollout}"
        )
    main = int(os.environ.get("RANK", "0")) == 0  # process 0 scores for all
    rewards = make_rewards(cfg, [d for d in (data, eval_data) if d is not None]) if main else None
    try:
        learner = Learner(cfg, tokenizer, cfg.num_rl_steps * cfg.num_epochs * cfg.num_mini_batches)
    except BaseException:
        if rewards is not None:
            rewards.close()
        raise
    group, pool = None, None
    loss_fn = make_loss_fn(cfg)
    evals: dict = {}
    no_signal_steps = 0
    try:
        bar = ("reward_mean", "kl", "response_length", "gen_tokens_per_s")
        with StepLoop(
            cfg, learner.engine, plan.num_steps, f"rlvr-{cfg.algorithm}", data.data_hash, bar
        ) as loop:
            if main:
                group = RolloutGroup(cfg.rollout_config())
                where = ", ".join(
                    f"pid {i['pid']} on {i['node']} (Ray node {i['ray_node_id'][:8]})"
                    for i in group.engine_info
                )
                log.info(
                    "rlvr: %d vLLM engine(s) ready in %.1fs: %s",
                    len(group.engines),
                    group.start_seconds,
                    where,
                )
            if loop.start:
                learner.sync(group)  # the resumed weights differ from the checkpoint the engines loaded
            preflight(
                cfg, learner, group, take(data.dataset, range(min(cfg.preflight_prompts, len(data.dataset))))
            )
            if main and eval_data is not None and loop.start == 0:
                evals["before"] = evaluate(cfg, group, tokenizer, rewards, eval_data)
                loop.tracker.log(0, evals["before"])
            elif main and eval_data is not None:  # resumed: the step-0 evaluation is in metrics.jsonl
                first = [r for r in read_metrics(out / "metrics.jsonl") if r.get("step") == 0]
                evals["before"] = {
                    k: v for k, v in (first[0] if first else {}).items() if k.startswith("eval/")
                }

            def generate(step: int) -> dict:
                return rollout(cfg, group, tokenizer, rewards, take(data.dataset, plan.indices(step)), step)

            # one-step off-policy (async_mode): the engines generate batch t+1 with the weights that made
            # batch t while the learner trains on t
            pool = ThreadPoolExecutor(max_workers=1) if cfg.async_mode and main else None
            pending = pool.submit(generate, loop.start) if pool and loop.start < plan.num_steps else None
            for step in loop.steps():
                batch = None
                if pending is not None:
                    batch = pending.result()
                    pending = pool.submit(generate, step + 1) if step + 1 < plan.num_steps else None
                elif main:
                    batch = generate(step)
                metrics = learn(cfg, learner, learner.share(batch), step, loss_fn)
                if pending is not None:
                    pending.result()  # weights may only change between generations
                metrics["weight_sync_s"] = learner.sync(group)
                metrics["episodes"] = (step + 1) * cfg.rollout_batch
                if metrics["no_signal"]:
                    no_signal_steps += 1
                    if main:
                        why = (
                            "all advantages are 0 (every group's rewards tie)"
                            if metrics["zero_advantage"]
                            else "the gradient is 0"
                        )
                        log.warning("rlvr step %d: no learning signal: %s", step + 1, why)
                last = step + 1 == plan.num_steps
                if (
                    main
                    and eval_data is not None
                    and (last or (cfg.eval_every and (step + 1) % cfg.eval_every == 0))
                ):
                    metrics.update(evaluate(cfg, group, tokenizer, rewards, eval_data))
                    if last:
                        evals["after"] = {k: v for k, v in metrics.items() if k.startswith("eval/")}
                loop.end_step(step + 1, metrics)
        ran = plan.num_steps - loop.start
        if main and ran and no_signal_steps == ran:
            log.warning(
                "rlvr: none of the %d steps had a learning signal: nothing was learned from the rewards. "
                "Check them (metrics.jsonl: reward_mean, tied_group_fraction) and the verifier names",
                ran,
            )
        if main:
            from ..io import atomic_write_json

            atomic_write_json(out / "eval.json", evals)
        learner.publish({"no_signal_steps": no_signal_steps})
        learner.engine.accelerator.wait_for_everyone()
    finally:
        if pool is not None:
            pool.shutdown(wait=True)
        if group is not None:
            group.shutdown()
        if rewards is not None:
            rewards.close()
    return out


def rlvr_command(args) -> int:
    from ..train.config import short_form

    short, overrides = short_form(args), getattr(args, "overrides", None) or []
    if not args.config and not short and not overrides:
        raise ConfigError("rlvr: give --config FILE.yaml (and/or --model/--data/--output, --set key=value)")
    run_rlvr(load_config(RLVRConfig, args.config, overrides, on_top=short, where="rlvr"))
    return 0
