"""`open-instruct run RECIPE --dry-run`: the plan in words -- data amounts, steps, how the batch splits
over processes and nodes, and the memory each process needs (memory.py) -- from the recipe alone."""

from __future__ import annotations

import dataclasses

from . import memory
from .schema import Plan, StagePlan


def format_plan(plan: Plan) -> str:
    """The human-readable plan `--dry-run` prints."""
    L = []
    r = plan.recipe
    L.append(
        f"recipe {r.name} ({plan.recipe_path}) -> {plan.output}   [dry run: nothing is trained or written]"
    )
    if r.description:
        L.append(f"  {r.description.strip()}")
    base_arch = (
        memory.tiny_arch(dataclasses.asdict(plan.tiny)) if plan.tiny else memory.resolve_arch(plan.base)
    )
    if plan.tiny:
        L.append(
            f"base model: tiny {plan.tiny.arch} built offline into {plan.base} "
            f"({memory.count_params(base_arch):,} parameters)"
        )
    elif base_arch:
        L.append(
            f"base model: {plan.base} ({base_arch.name}, {memory.count_params(base_arch) / 1e9:.2f}B parameters)"
        )
    else:
        L.append(
            f"base model: {plan.base} (architecture unknown: no memory estimate; add it to "
            f"plan.KNOWN_ARCHS or use a local dir with config.json)"
        )
    if plan.eval is not None:
        ev = plan.eval
        L.append(
            f"held-out eval after each stage: {plan.eval_label} ({'first ' + str(ev.limit) if ev.limit else 'all'} prompts, "
            f"{ev.samples} sample(s), temperature {ev.resolved_temperature}, max {ev.max_tokens} tokens)"
        )
    gpu = r.launch.gpu_memory_gb
    L.append(
        f"launch: {r.launch.num_processes} process(es) on {r.launch.nodes} node(s) for SFT/DPO unless a stage "
        f"sets its own" + (f"; {gpu:g} GB per GPU" if gpu else "")
    )
    for sp in plan.stages:
        L.append("")
        L += _format_stage(sp, base_arch, len(plan.stages), gpu)
    return "\n".join(L)


def _format_amounts(amounts: list, indent: str) -> list[str]:
    out = []
    for a in amounts:
        if a.how == "unknown":
            out.append(f"{indent}{a.name}: size unknown (add `num_rows:` to the source for planning)")
        else:
            out.append(
                f"{indent}{a.name}: {memory.fmt_int(a.selected)} of {memory.fmt_int(a.rows)} rows ({a.how})"
            )
    return out


def _format_stage(sp: StagePlan, base_arch, n_stages: int, gpu_gb: float | None = None) -> list[str]:
    cfg = sp.cfg
    L = [f"[{sp.index + 1}/{n_stages}] {sp.name} ({sp.type}): {cfg.model_name_or_path} -> {sp.out}"]
    for role, mix in sp.mixes.items():
        rows = sp.rows.get(role)
        L.append(f"  data ({role}): {mix}, {memory.fmt_int(rows)} rows")
        L += _format_amounts(sp.amounts.get(role, []), "      ")
    rows = sp.rows.get("train")
    zero, offload = memory.zero_stage_of(cfg.deepspeed)
    if sp.type in ("sft", "dpo"):
        accum = cfg.accumulation_steps(sp.num_processes)
        eff = cfg.per_device_train_batch_size * accum * sp.num_processes
        unit = "pairs" if sp.type == "dpo" else "sequences"
        L.append(
            f"  batch: effective {eff} {unit} = {cfg.per_device_train_batch_size} per process x "
            f"{sp.num_processes} process(es) on {sp.nodes} node(s) x {accum} accumulation step(s)"
        )
        if rows is not None:
            per_epoch = rows // eff
            full = int(-(-per_epoch * cfg.num_train_epochs // 1))
            steps = cfg.max_train_steps or full
            if cfg.max_train_steps:  # max steps win over epochs (engine.BatchPlan), as in HF Trainer
                how = f"max_train_steps {steps:,} = {steps / max(per_epoch, 1):.2f} epoch(s) of {per_epoch:,} steps"
            else:
                how = f"{cfg.num_train_epochs:g} epoch(s) x {per_epoch:,} steps/epoch = {steps:,} optimizer steps"
            L.append(f"  steps: {how}")
            warm = -(-int(cfg.warmup_ratio * steps * 1000) // 1000)
            L.append(
                f"  lr: {cfg.learning_rate:g} {cfg.lr_scheduler_type}, warmup ratio {cfg.warmup_ratio:g} (~{warm} steps)"
            )
        else:
            cap = f" (max_train_steps {cfg.max_train_steps})" if cfg.max_train_steps else ""
            L.append(
                f"  steps: unknown until the data is loaded{cap}; lr {cfg.learning_rate:g} {cfg.lr_scheduler_type}"
            )
        if sp.type == "sft":
            L.append(
                f"  loss: token cross-entropy, {cfg.loss_reduction} reduction; max_seq_length {cfg.max_seq_length}"
                f"{', packed' if cfg.packing else ''}"
            )
        else:
            if cfg.policy_pairs.enabled:
                pc = cfg.policy_pairs
                L.append(
                    f"  pairs: the starting model's own answers, {pc.samples} per prompt at T={pc.temperature:g} "
                    f"(max {pc.max_tokens} tokens), up to {pc.pairs_per_prompt} (right, wrong) pair(s) per prompt"
                )
            nll = f" + {cfg.nll_coef:g} x NLL(chosen)" if cfg.nll_coef else ""
            L.append(
                f"  loss: {cfg.loss_type} beta {cfg.beta:g}{nll}; reference {cfg.reference}; "
                f"max_seq_length {cfg.max_seq_length}"
            )
    else:
        steps = cfg.num_rl_steps
        per_step = cfg.rollout_batch
        L.append(
            f"  rollouts: {cfg.num_unique_prompts_rollout} prompts x {cfg.num_samples_per_prompt_rollout} "
            f"sample(s) = {per_step} sequences per RL step, temperature {cfg.temperature:g}, "
            f"response length {cfg.response_length}"
        )
        how = (
            f"max_train_steps {cfg.max_train_steps}"
            if cfg.max_train_steps
            else f"{cfg.total_episodes:,} episodes / {per_step}"
        )
        passes = (
            f"; {steps * cfg.num_unique_prompts_rollout / rows:.2f} passes over {rows:,} prompts"
            if rows
            else ""
        )
        L.append(
            f"  steps: {how} = {steps:,} RL steps x {cfg.num_epochs} epoch(s) x {cfg.num_mini_batches} "
            f"mini-batch(es) = {steps * cfg.num_epochs * cfg.num_mini_batches:,} optimizer steps{passes}"
        )
        mini = per_step // cfg.num_mini_batches
        n_proc = sp.num_processes
        L.append(
            f"  batch: mini-batch {mini} sequences = {cfg.per_device_train_batch_size} per process x "
            f"{n_proc} learner process(es) on {sp.nodes} node(s) x "
            f"{mini // (cfg.per_device_train_batch_size * n_proc)} accumulation step(s)"
        )
        kl = f"beta {cfg.beta:g} ({cfg.estimator})" if cfg.beta > 0 else "no KL (beta 0)"
        extra = (
            f"PPO clip {cfg.cliprange:g}, value clip {cfg.cliprange_value:g}, vf_coef {cfg.vf_coef:g}, "
            f"gamma {cfg.gamma:g}, lambda {cfg.lam:g}, value model "
            f"{cfg.value_model_name_or_path or '(policy + zero head)'}"
            if cfg.algorithm == "ppo"
            else f"GRPO group {cfg.num_samples_per_prompt_rollout}"
        )
        L.append(f"  {cfg.algorithm}: lr {cfg.learning_rate:g} {cfg.lr_scheduler_type}, {kl}, {extra}")
        pen = f", no-EOS penalty {cfg.penalty_reward_value:g}" if cfg.non_stop_penalty else ""
        names = (
            ", ".join(sp.reward_names)
            if sp.reward_names
            else "named by the data's `dataset` column (hub data: checked when loaded)"
        )
        L.append(f"  rewards: verification x {cfg.verification_reward:g}{pen}; verifiers: {names}")
        rc = cfg.rollout_config()
        L.append(
            f"  engines: {rc.num_engines} vLLM engine(s) on {rc.device}, tensor parallel {rc.tensor_parallel_size}"
            f"{', one-step off-policy' if cfg.async_mode else ''}"
        )
    # memory
    arch = base_arch
    if arch is None:
        L.append("  memory: unknown architecture")
        return L
    value_arch = None
    if sp.type == "rlvr" and cfg.algorithm == "ppo" and cfg.value_model_name_or_path:
        value_arch = memory.resolve_arch(cfg.value_model_name_or_path) or arch
    mem = memory.estimate_memory(sp.type, cfg, arch, sp.num_processes, value_arch)
    w = memory.dtype_bytes(cfg.dtype)
    zs = (
        f"ZeRO-{zero}" + (" (optimizer offloaded to CPU)" if offload else "")
        if zero
        else "no ZeRO (DDP replicas)"
    )
    weights = f"{'bf16' if w == 2 else 'fp32'} weights"
    if getattr(cfg, "use_lora", False):
        weights = ("4-bit NF4 base" if cfg.load_in_4bit else weights) + " + LoRA adapter"
    L.append(
        f"  memory ({arch.name}, {weights}, {zs}, gradient checkpointing "
        f"{'on' if cfg.gradient_checkpointing else 'off'}):"
    )
    L += memory.format_memory(mem)
    if gpu_gb:
        budget = gpu_gb * memory.GB
        if mem.learner_total > budget:
            L.append(
                f"    WARNING: the training process estimate ({memory.fmt_gb(mem.learner_total)}) exceeds "
                f"{gpu_gb:g} GB per GPU"
            )
        if mem.engine:
            weights, kv = mem.engine.get("weights", 0.0), mem.engine.get("kv cache", 0.0)
            util = cfg.rollout_config().gpu_memory_utilization
            if weights > budget * util:
                L.append(
                    f"    WARNING: the vLLM engine's weights ({memory.fmt_gb(weights)}) exceed {util:.0%} of "
                    f"{gpu_gb:g} GB per GPU: raise rollout.tensor_parallel_size"
                )
            elif weights + kv > budget * util:
                free = max(budget * util - weights, 1.0)
                L.append(
                    f"    (vLLM has ~{memory.fmt_gb(free)} for KV cache at {util:.0%} utilisation: it generates "
                    f"the batch in ~{-(-kv // free):.0f} waves)"
                )
    return L
