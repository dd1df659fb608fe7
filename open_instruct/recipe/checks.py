"""The data checks a recipe runs before anything heavy starts: every row of every local mix of every
stage (data.validate, streamed), each RLVR row's verifier and label (reward_fns), user reward modules,
and enough rows for one batch."""

from __future__ import annotations

from ..errors import DataError
from ..generation.evaluate import EvalSpec, label_check, load_reward_modules
from .schema import StagePlan
from .stages import STAGE_TYPES


def check_mix(mix: str, kind: str, where: str):
    """Every row of `mix` checked for `kind` (RLVR rows: their verifier exists and accepts the label)."""
    from ..data.validate import validate_mix

    return validate_mix(mix, kind, where, label_check=label_check if kind == "rlvr" else None)


def check_stage_data(sp: StagePlan) -> None:
    cfg = sp.cfg
    st = STAGE_TYPES[sp.type]
    load_reward_modules(st.reward_modules(cfg), f"{sp.where}.reward_modules")  # before rows name them
    fields = {role: (dotted, kind) for dotted, (role, kind) in st.mix_fields().items()}
    for role, mix in sp.mixes.items():
        dotted, kind = fields[role]
        chk = check_mix(mix, kind, f"{sp.where}.{dotted}")
        sp.rows[role] = chk.rows
        sp.amounts[role] = chk.amounts
        if kind == "rlvr":
            sp.reward_names = sorted(set(sp.reward_names) | chk.dataset_names)
    rows = sp.rows.get("train")
    if sp.type == "dpo" and cfg.policy_pairs.enabled and sp.rows.get("pair_prompts") is not None:
        pc = cfg.policy_pairs
        prompts = sp.rows["pair_prompts"] if pc.limit is None else min(pc.limit, sp.rows["pair_prompts"])
        rows = prompts * pc.pairs_per_prompt  # at most this many pairs
    if rows is None:
        return
    if sp.type == "rlvr":
        if rows < cfg.num_unique_prompts_rollout:
            raise DataError(
                f"{sp.where}.dataset_mix: {rows} prompts, fewer than num_unique_prompts_rollout="
                f"{cfg.num_unique_prompts_rollout}"
            )
        return
    effective = cfg.per_device_train_batch_size * cfg.accumulation_steps(sp.num_processes) * sp.num_processes
    if rows < effective:
        what = (
            f"policy_pairs.prompts: at most {rows} pairs"
            if sp.type == "dpo" and cfg.policy_pairs.enabled
            else f"dataset_mix: {rows} rows"
        )
        raise DataError(f"{sp.where}.{what}, fewer than one effective batch ({effective})")


def check_eval_data(mix: str, ev: EvalSpec, where: str) -> None:
    load_reward_modules(ev.reward_modules, f"{where}.reward_modules")
    check_mix(mix, "rlvr", f"{where}.dataset_mix")
