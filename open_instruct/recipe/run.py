"""`open-instruct run RECIPE`: one YAML that chains SFT -> DPO -> RLVR stages, run with one command.

    open-instruct run tiny [--set sft.learning_rate=1e-3 ...] [--dry-run] [--output DIR]

What it does, top to bottom (`run_recipe`):
1. load the recipe (a file, or a shipped recipe by name), apply `--set`, validate ALL of it before
   anything heavy starts -- every stage's config, every data mix, the verifiers and user rewards, the
   launch layout (load.py, checks.py) -- then the state of the output dir (state.py);
2. `--dry-run`: print the plan (data amounts, steps, batch split, memory per process) and stop;
3. build the base model when it is a `tiny:` spec, and evaluate it on the held-out set (`eval:`);
4. for each stage: skip it when finished and verified, else train it (an interrupted stage resumes
   from its newest checkpoint), write lineage.json, evaluate it on the held-out set;
5. print the summary table and write `<output>/report.md`;
6. push what the recipe and its stages ask to the Hugging Face Hub (push.py; a rerun retries a failed push).
On several nodes the same command runs on every node (NODE_RANK set): node 0 does the evaluations,
lineage and report; nodes 0..N-1 of a stage over N nodes take part in it, the job's other nodes wait
for it to finish (the run directory is on a shared filesystem).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from ..io import atomic_write_yaml, read_json
from ..logs import use_log_dir, verbose
from . import lineage as lin
from .dry_run import format_plan
from .launch import build_base, node_rank, run_stage, say, wait_for
from .load import load_plan
from .report import StageResult, format_summary, write_report
from .schema import Plan
from .state import assess_stages


def _last_step(out: Path) -> int | None:
    from ..track import read_metrics

    rows = read_metrics(out / "metrics.jsonl")
    return max((r.get("step", 0) for r in rows), default=None) if rows else None


def _weights(model: str | Path) -> tuple[str | None, dict] | None:
    """(checksum algorithm, {file: checksum}) of a local model's weights (its top-level *.safetensors):
    a published model's from its manifest (verified when the stage finished), another dir's computed.
    None for a hub id or a dir without safetensors. Weights, not the model digest, decide "no change":
    a stage also rewrites the tokenizer and config files, and a base dir's digest covers other files."""
    from ..train.checkpoint import MODEL_MANIFEST, file_checksum

    path = Path(model)
    if not path.is_dir():
        return None
    manifest = read_json(path / MODEL_MANIFEST)
    if manifest:
        algo = manifest.get("algorithm")
        files = {n: i["checksum"] for n, i in manifest.get("files", {}).items() if "/" not in n}
    else:
        algo, files = None, {}
        for p in sorted(path.glob("*.safetensors")):
            files[p.name], algo = file_checksum(p)
    files = {n: c for n, c in files.items() if n.endswith(".safetensors")}
    return (algo, files) if files else None


def run_plan(plan: Plan) -> list[StageResult]:
    from ..generation.heldout import EvalSession, heldout_eval
    from ..train.checkpoint import model_digest, verify_model

    main = node_rank() == 0
    plan.output.mkdir(parents=True, exist_ok=True)
    build_base(plan)
    base_digest = model_digest(plan.base)
    assess_stages(plan, base_digest)  # conflicts with finished stages fail here, before anything runs
    if main:
        atomic_write_yaml(plan.output / "recipe.yaml", plan.raw)
    t_all = time.time()
    session = EvalSession(plan.eval, plan.eval_mix) if plan.eval is not None and main else None
    gpu_eval = plan.eval is not None and plan.eval.rollout.get("device") == "cuda"
    results: list[StageResult] = []
    try:
        base_eval = None
        if session is not None and plan.eval.base:
            say(f"held-out eval of the base model ({plan.base})")
            base_eval = heldout_eval(session, plan.base, base_digest, plan.output / "base_eval.json")
        status = "built" if plan.tiny else "-"
        results.append(
            StageResult("base", "-", status, None, None, base_digest, base_eval, None, Path(plan.base))
        )

        parent_digest, parent = base_digest, Path(plan.base)
        for sp in plan.stages:
            if sp.status == "done":
                rec = lin.read(sp.out) or {}
                digest = rec.get("model", {}).get("digest")
                say(
                    f"stage {sp.name}: skipped -- finished model verified (digest {digest}), same config, same parent, same data"
                )
                status, seconds = "skipped", rec.get("wall_seconds")
            elif sp.status == "adopt":
                digest = verify_model(sp.out)
                say(f"stage {sp.name}: {sp.note}")
                if main:
                    lin.write(sp.out, lin.finished_record(plan, sp, parent_digest, digest, lin.now(), None))
                status, seconds = "skipped", None
            elif not main and node_rank() >= sp.nodes:  # a stage on fewer nodes than the job: wait for it
                wait_for(
                    lambda sp=sp: (lin.read(sp.out) or {}).get("status") == "finished",
                    f"stage {sp.name} on node 0",
                )
                digest, status, seconds = verify_model(sp.out), "trained on other nodes", None
            else:
                started = lin.now()
                status = "resumed" if sp.status == "resume" else "trained"
                say(
                    f"stage {sp.name} ({sp.type}): {sp.note or 'training'} from {sp.cfg.model_name_or_path} -> {sp.out}"
                )
                if main:
                    prev = lin.read(sp.out) or {}
                    started = prev.get("started_at", started)
                    lin.write(sp.out, lin.stage_record(plan, sp, parent_digest, "running", started))
                if session is not None and (sp.type == "rlvr" or gpu_eval):
                    session.close_engine()  # the stage's own engines / the GPUs need the room
                t0 = time.time()
                run_stage(sp, plan.recipe.launch.master_port)
                seconds = round(time.time() - t0, 2)
                digest = verify_model(sp.out)
                if digest is None:
                    raise RuntimeError(
                        f"stage {sp.name}: finished without an intact published model in {sp.out}"
                    )
                if main:
                    lin.write(sp.out, lin.finished_record(plan, sp, parent_digest, digest, started, seconds))
                weights = _weights(sp.out)
                if digest == parent_digest or (weights is not None and weights == _weights(parent)):
                    status = "no change"
                    say(
                        f"stage {sp.name}: WARNING its weights are identical to its parent's ({parent}): it learned nothing"
                    )
                say(f"stage {sp.name}: done in {seconds:.0f}s (model digest {digest})")
            heldout = None
            if session is not None:
                say(f"held-out eval of stage {sp.name}")
                heldout = heldout_eval(session, str(sp.out), digest, sp.out / "heldout_eval.json")
            stage_eval = read_json(sp.out / "eval.json")
            results.append(
                StageResult(
                    sp.name, sp.type, status, seconds, _last_step(sp.out), digest, heldout, stage_eval, sp.out
                )
            )
            parent_digest, parent = digest, sp.out
    finally:
        if session is not None:
            session.close()
    if main:
        total = time.time() - t_all
        print(format_summary(plan, results, total), flush=True)
        print(f"report: {write_report(plan, results, total)}", flush=True)
        from .push import push_recipe

        push_recipe(plan)  # stages with push_to_hub, then the recipe's push_to_hub
    return results


def run_recipe(
    recipe: str | Path, overrides: list[str] | None = None, output: str | None = None, dry_run: bool = False
) -> list[StageResult] | str:
    """Validates the recipe, then prints the plan (dry run) or runs it. Returns the results (or, for
    a dry run, the plan text)."""
    if dry_run:
        with tempfile.TemporaryDirectory(prefix="oi-dry-run-") as scratch:
            text = format_plan(load_plan(recipe, overrides, output, scratch=Path(scratch)))
        print(text, flush=True)
        return text
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()  # the stages show their own progress; per-dataset bars drown it in the log
    with tempfile.TemporaryDirectory(prefix="oi-validate-") as scratch:
        checked = load_plan(recipe, overrides, output, scratch=Path(scratch))  # everything, nothing written
    for sp in checked.stages:  # and that this machine can run every stage (the dry run plans for another)
        sp.cfg.check_machine(f"{checked.where} {sp.where}")
    plan = load_plan(recipe, overrides, output)  # the same, with inline mixes written into <output>/mixes
    logs = use_log_dir(plan.output / "logs", "run" if node_rank() == 0 else f"run-node{node_rank()}")
    if logs is not None and not verbose():
        say(f"logs of vLLM, Ray, DeepSpeed and the stages: {logs} (-v shows them here)")
    try:
        return run_plan(plan)
    finally:
        _shutdown_ray()


def _shutdown_ray() -> None:
    try:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    except Exception:  # noqa: BLE001
        pass


def run_command(args) -> int:
    run_recipe(args.recipe, overrides=args.overrides, output=args.output, dry_run=args.dry_run)
    return 0
