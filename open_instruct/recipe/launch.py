"""Running one stage of a recipe: in this process (one process), or as `torchrun` over its processes and
nodes (the same `open-instruct run` command on every node, with NODE_RANK and MASTER_ADDR set, e.g. by
scripts/slurm_recipe.sbatch); and building a `tiny:` base model."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ..config import to_dict
from ..errors import ConfigError
from ..io import atomic_write_json, atomic_write_yaml
from ..logs import LOG_NAME_ENV
from .schema import Plan, StagePlan
from .stages import STAGE_TYPES


def say(msg: str) -> None:
    print(f"[recipe] {msg}", flush=True)


def node_rank() -> int:
    """This machine's index in a multi-node run (0 on one machine): NODE_RANK (torchrun, our Slurm
    script), MACHINE_RANK (accelerate) or SLURM_NODEID."""
    for key in ("NODE_RANK", "MACHINE_RANK", "SLURM_NODEID"):
        if os.environ.get(key, "").strip():
            return int(os.environ[key])
    return 0


def reset_accelerate() -> None:
    """Accelerate keeps process-wide singletons; each in-process stage starts from a clean slate."""
    try:
        from accelerate.state import AcceleratorState, GradientState

        AcceleratorState._reset_state(True)
        GradientState._reset_state()
    except Exception:  # noqa: BLE001 - nothing to reset
        pass


def torchrun_command(sp: StagePlan, cfg_path: Path, master_port: int) -> list[str]:
    """The torchrun command of a multi-process stage on this node: `--nnodes/--node_rank` and a static
    rendezvous at MASTER_ADDR:MASTER_PORT when it spans nodes."""
    per_node = sp.num_processes // sp.nodes
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(per_node)]
    if sp.nodes > 1:
        cmd += [
            "--nnodes",
            str(sp.nodes),
            "--node_rank",
            str(node_rank()),
            "--master_addr",
            os.environ.get("MASTER_ADDR", "localhost"),
            "--master_port",
            os.environ.get("MASTER_PORT", str(master_port)),
        ]
    else:
        cmd += ["--master_port", str(master_port)]
    return cmd + ["-m", "open_instruct.cli", sp.type, "--config", str(cfg_path)]


def run_stage(sp: StagePlan, master_port: int) -> None:
    """Trains stage `sp`: in this process when it has one process, else through torchrun on this node
    (every node of a multi-node stage runs this with its own NODE_RANK)."""
    if sp.num_processes == 1:
        reset_accelerate()
        try:
            STAGE_TYPES[sp.type].run(sp.cfg)
        finally:
            reset_accelerate()
        return
    cfg_path = sp.out / "launch_config.yaml"
    if node_rank() == 0:
        atomic_write_yaml(cfg_path, to_dict(sp.cfg))
    else:  # the other nodes read the config node 0 writes into the shared run directory
        wait_for(lambda: cfg_path.is_file(), f"{cfg_path} from node 0")
    cmd = torchrun_command(sp, cfg_path, master_port)
    say(f"{sp.name}: launching {' '.join(cmd)}")
    res = subprocess.run(cmd, env=launch_env(sp))
    if res.returncode != 0:
        raise RuntimeError(f"stage {sp.name}: launched processes exited with status {res.returncode}")


def launch_env(sp: StagePlan) -> dict[str, str]:
    """The launched processes' environment: they log into <run>/logs/stage-<name>.log (rank 0 keeps
    this console for its progress bar and our own lines; other ranks show only warnings and errors,
    open_instruct/logs.py). OMP_NUM_THREADS=1 is torchrun's own default for several processes per
    node; set here, torchrun does not print its banner about it before every stage."""
    env = dict(os.environ)
    env[LOG_NAME_ENV] = f"stage-{sp.name}"
    if sp.num_processes // sp.nodes > 1:
        env.setdefault("OMP_NUM_THREADS", "1")
    return env


def wait_for(ready, what: str, poll_s: float = 5.0, timeout_s: float | None = None) -> None:
    """Blocks until `ready()` (a node > 0 waiting for node 0's work in the shared run directory)."""
    t0 = time.time()
    said = False
    while not ready():
        if timeout_s is not None and time.time() - t0 > timeout_s:
            raise RuntimeError(f"node {node_rank()}: gave up waiting for {what} after {timeout_s:.0f}s")
        if not said:
            say(f"node {node_rank()}: waiting for {what} (the run directory must be on a shared filesystem)")
            said = True
        time.sleep(poll_s)


def build_base(plan: Plan) -> None:
    """Builds the tiny base model into <output>/base (atomically; byte-identical for the same spec)."""
    if plan.tiny is None:
        return
    base = Path(plan.base)
    spec = dataclasses.asdict(plan.tiny)
    marker = base / "tiny_spec.json"
    if marker.is_file():
        if json.loads(marker.read_text()) == spec:
            return
        raise ConfigError(
            f"{plan.where}.base_model: {base} was built from a different tiny spec; "
            f"use another --output or delete {plan.output}"
        )
    if node_rank() != 0:
        wait_for(lambda: marker.is_file(), f"the tiny base model in {base}")
        return
    from ..model.tiny import build_tiny

    tmp = base.parent / ".tmp-base"
    shutil.rmtree(tmp, ignore_errors=True)
    build_tiny(tmp, **spec)
    atomic_write_json(tmp / "tiny_spec.json", spec)
    if base.exists():
        shutil.rmtree(base)
    os.replace(tmp, base)
    say(f"built tiny {plan.tiny.arch} base model into {base}")
