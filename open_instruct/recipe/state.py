"""Stage state: is each stage of a recipe done (skip it), interrupted (resume it), or to train -- and is
what the output dir holds compatible with the recipe at all. A finished stage is skipped only when
its model digest verifies AND its lineage records the same config (config.config_diff, the rule
standalone stages use too), the same parent digest and the same data fingerprints. A finished stage
that does not match is an error -- never silently reused or overwritten."""

from __future__ import annotations

import os

import yaml

from ..config import config_diff, describe_diff, to_dict
from ..errors import ConfigError
from ..train.checkpoint import list_steps, verify_model
from . import lineage as lin
from .schema import Plan, StagePlan


def _diff(old: dict, new: dict, cls: type | None = None) -> list[str]:
    # paths inside the run directory compare relative to it: a moved or copied run is the same run
    return config_diff(old, new, cls, root=_run_root)


def _run_root(stage_cfg: dict) -> str:
    """A recipe stage writes `<output>/<stage>`; its run directory is `<output>`."""
    out = stage_cfg.get("output_dir")
    return os.path.dirname(os.path.normpath(out)) if out else "\0"


def _fingerprints(sp: StagePlan) -> dict[str, str]:
    return {role: lin.mix_fingerprint(mix)["fingerprint"] for role, mix in sp.mixes.items()}


def _conflict(sp: StagePlan, what: str) -> ConfigError:
    return ConfigError(
        f"{sp.where}: {sp.out} holds a run with a different {what}; use another --output, "
        f"or delete {sp.out} (and the stages after it) to train it again"
    )


def assess_stages(plan: Plan, base_digest: str) -> None:
    """Sets each stage's status (done / resume / adopt / pending) or raises on a conflict, before
    anything is trained. A stage can only be done if its parent is done (or is the base)."""
    parent_digest: str | None = base_digest
    for sp in plan.stages:
        new_cfg = to_dict(sp.cfg)
        rec = lin.read(sp.out)
        digest = verify_model(sp.out) if sp.out.is_dir() else None
        if digest is not None:
            if rec is None or rec.get("status") != "finished":
                saved = sp.out / "resolved_config.yaml"
                if (
                    saved.is_file()
                    and not _diff(yaml.safe_load(saved.read_text()) or {}, new_cfg, type(sp.cfg))
                    and parent_digest is not None
                ):
                    sp.status, sp.note = "adopt", "finished model without lineage; recording it"
                    parent_digest = digest
                    continue
                raise _conflict(sp, "or unrecorded config (no lineage.json)")
            diff = _diff(rec.get("config", {}), new_cfg, type(sp.cfg))
            if diff:
                raise _conflict(sp, f"config ({describe_diff(rec.get('config', {}), new_cfg, diff)})")
            if parent_digest is None:
                raise ConfigError(
                    f"{sp.where}: {sp.out} is finished but the stage before it is not; "
                    f"delete {sp.out} (and the stages after it) or use another --output"
                )
            if rec.get("parent", {}).get("digest") != parent_digest:
                raise _conflict(
                    sp,
                    f"parent checkpoint (digest {rec.get('parent', {}).get('digest')} != "
                    f"{parent_digest} now)",
                )
            if rec.get("model", {}).get("digest") != digest:
                raise _conflict(sp, "model than its lineage records")
            old_fp = {k: v.get("fingerprint") for k, v in (rec.get("data") or {}).items()}
            new_fp = _fingerprints(sp)
            changed = [k for k in new_fp if old_fp.get(k) != new_fp[k]]
            if changed:
                raise _conflict(sp, f"data ({', '.join(sp.mixes[k] for k in changed)} changed)")
            sp.status = "done"
            parent_digest = digest
            continue
        # not finished
        started = rec is not None or list_steps(sp.out / "checkpoints")
        if started:
            old_cfg = rec.get("config") if rec else None
            if old_cfg is None and (sp.out / "resolved_config.yaml").is_file():
                old_cfg = yaml.safe_load((sp.out / "resolved_config.yaml").read_text()) or {}
            if old_cfg is not None:
                diff = _diff(old_cfg, new_cfg, type(sp.cfg))
                if diff:
                    raise _conflict(
                        sp, f"config ({describe_diff(old_cfg, new_cfg, diff)}) in its interrupted run"
                    )
            if (
                rec
                and parent_digest is not None
                and rec.get("parent", {}).get("digest") not in (None, parent_digest)
            ):
                raise _conflict(sp, "parent checkpoint in its interrupted run")
            steps = list_steps(sp.out / "checkpoints")
            sp.status = "resume" if steps else "pending"
            sp.note = f"resuming from checkpoint step {steps[-1][0]}" if steps else ""
        parent_digest = None  # everything after a stage that still has to train is not done
