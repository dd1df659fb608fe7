"""The cluster launch scripts and the GPU smoke check (scripts/, docs/cluster.md).

Slurm, a Ray cluster and GPUs are not here: the launch scripts run against stub `srun`, `scontrol`,
`nvidia-smi`, `ray` and `open-instruct` executables first on PATH that record their argv and
environment (srun runs its command once per node, as Slurm would for the allocation), and `ray job
submit` is also checked against the real Ray CLI. The GPU check runs for real: all SKIP without
CUDA, its SFT/DPO/attention checks on the CPU with --device cpu, and its NCCL check's learner ->
receiver flow with only NCCL and the CUDA stream replaced.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = REPO / "scripts"
SBATCH = SCRIPTS / "slurm_recipe.sbatch"
RAY_JOB = SCRIPTS / "ray_job.sh"
GPU_CHECK = SCRIPTS / "gpu_check.sh"

_RECORD = """#!{python}
import json, os, subprocess, sys
KEYS = ("NODE_RANK", "SLURM_NODEID", "MASTER_ADDR", "MASTER_PORT", "RAY_ADDRESS", "CUDA_VISIBLE_DEVICES")
with open(os.environ["STUB_LOG"], "a") as f:
    f.write(json.dumps({{"cmd": os.path.basename(sys.argv[0]), "argv": sys.argv[1:],
                        "env": {{k: os.environ.get(k) for k in KEYS}}}}) + "\\n")
"""

STUBS = {
    "scontrol": "print('\\n'.join(os.environ['STUB_HOSTS'].split()))",
    "nvidia-smi": "print('\\n'.join(f'GPU {i}: NVIDIA H200 (UUID: GPU-{i})' for i in range(int(os.environ['STUB_GPUS']))))",
    # Slurm runs the step's command once per node of the allocation, with that node's SLURM_NODEID
    "srun": """
args, i, nodes = sys.argv[1:], 0, 1
while args[i].startswith("-"):
    key, val, i = (*args[i].split("=", 1), i + 1) if "=" in args[i] else (args[i], args[i + 1], i + 2)
    nodes = int(val) if key in ("--nodes", "-N") else nodes
hosts, rc = os.environ["STUB_HOSTS"].split(), 0
for node in range(nodes):
    env = dict(os.environ, SLURM_NODEID=str(node), SLURMD_NODENAME=hosts[node], SLURM_PROCID=str(node))
    rc = max(rc, subprocess.call(args[i:], env=env))
sys.exit(rc)
""",
    "ray": "sys.exit(int(os.environ.get('STUB_RAY_JOIN_RC', '0')) if '--address' in sys.argv else 0)",
    "open-instruct": "sys.exit(int(os.environ.get('STUB_OI_RC', '0')))",
}


@pytest.fixture
def stubs(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in STUBS.items():
        path = bin_dir / name
        path.write_text(_RECORD.format(python=sys.executable) + body + "\n")
        path.chmod(0o755)
    log = tmp_path / "calls.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RAY_"))}
    for key in ("NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "CUDA_VISIBLE_DEVICES", "LEARNER_GPUS_PER_NODE"):
        env.pop(key, None)
    env.update(PATH=f"{bin_dir}:{env['PATH']}", STUB_LOG=str(log), STUB_HOSTS="gpu01 gpu02", STUB_GPUS="8")

    def run(script: Path, *args: str, cwd: Path = tmp_path, **extra: str):
        res = subprocess.run(
            ["bash", str(script), *args],
            env={**env, **extra},
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=60,
        )
        calls = [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []
        log.unlink(missing_ok=True)
        return res, calls

    return run


SLURM_2_NODES = {"SLURM_JOB_NODELIST": "gpu[01-02]", "SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_ID": "4242"}


def _by_node(calls, cmd):
    return {c["env"]["SLURM_NODEID"]: c for c in calls if c["cmd"] == cmd and c["argv"][0] != "stop"}


@pytest.mark.parametrize("script", [SBATCH, RAY_JOB, GPU_CHECK])
def test_scripts_parse(script):
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True).returncode == 0
    assert os.access(script, os.X_OK), f"{script.name} is not executable"


def test_slurm_per_node_script_parses():
    body = SBATCH.read_text().split("<<'EOF' || true\n", 1)[1].split("\nEOF\n", 1)[0]
    res = subprocess.run(["bash", "-n"], input=body, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_slurm_two_nodes_one_command_each(stubs):
    args = ["tiny", "--output", "/shared/runs/x", "--set", "sft.wandb_run_name=a b"]
    res, calls = stubs(SBATCH, *args, LEARNER_GPUS_PER_NODE="4", **SLURM_2_NODES)
    assert res.returncode == 0, res.stderr
    srun = [c for c in calls if c["cmd"] == "srun"]
    assert len(srun) == 1 and srun[0]["argv"][:4] == ["--nodes", "2", "--ntasks-per-node", "1"]
    # node 0 starts the Ray head, node 1 joins it; each offers Ray the 4 GPUs after the learner's 4
    ray = _by_node(calls, "ray")
    assert ray["0"]["argv"] == [
        "start",
        "--head",
        "--port",
        "6379",
        "--num-gpus",
        "4",
        "--disable-usage-stats",
    ]
    assert ray["1"]["argv"] == [
        "start",
        "--address",
        "gpu01:6379",
        "--num-gpus",
        "4",
        "--disable-usage-stats",
    ]
    assert ray["0"]["env"]["CUDA_VISIBLE_DEVICES"] == ray["1"]["env"]["CUDA_VISIBLE_DEVICES"] == "4,5,6,7"
    # the same open-instruct command on both nodes, with the rendezvous set; the learner sees every GPU
    oi = _by_node(calls, "open-instruct")
    for rank in ("0", "1"):
        assert oi[rank]["argv"] == ["run", *args]
        assert oi[rank]["env"] == {
            "NODE_RANK": rank,
            "SLURM_NODEID": rank,
            "MASTER_ADDR": "gpu01",
            "MASTER_PORT": "29500",
            "RAY_ADDRESS": "gpu01:6379",
            "CUDA_VISIBLE_DEVICES": None,
        }
    # per node: Ray up, then the run, then Ray stopped
    for rank in ("0", "1"):
        order = [f"{c['cmd']} {c['argv'][0]}" for c in calls if c["env"]["SLURM_NODEID"] == rank]
        assert order == ["nvidia-smi -L", "ray start", "open-instruct run", "ray stop"]


def test_slurm_takes_the_gpus_slurm_assigned(stubs):
    res, calls = stubs(
        SBATCH,
        "tiny",
        LEARNER_GPUS_PER_NODE="1",
        CUDA_VISIBLE_DEVICES="2,3,5,7",
        MASTER_PORT="31000",
        **SLURM_2_NODES,
    )
    assert res.returncode == 0, res.stderr
    ray = _by_node(calls, "ray")
    assert ray["0"]["argv"][-3:] == ["--num-gpus", "3", "--disable-usage-stats"]
    assert ray["0"]["env"]["CUDA_VISIBLE_DEVICES"] == "3,5,7"
    oi = _by_node(calls, "open-instruct")
    assert oi["1"]["env"]["CUDA_VISIBLE_DEVICES"] == "2,3,5,7" and oi["1"]["env"]["MASTER_PORT"] == "31000"


def test_slurm_without_rlvr_gives_ray_every_gpu(stubs):
    res, calls = stubs(SBATCH, "dpo_only", LEARNER_GPUS_PER_NODE="0", **SLURM_2_NODES)
    assert res.returncode == 0, res.stderr
    ray = _by_node(calls, "ray")
    assert ray["1"]["argv"][-3:-1] == ["--num-gpus", "8"]
    assert ray["1"]["env"]["CUDA_VISIBLE_DEVICES"] == "0,1,2,3,4,5,6,7"


def test_slurm_nodes_beyond_the_learners_give_ray_every_gpu(stubs):
    # Tülu 3 70B's shape: learners on the first nodes, the engine on a node without learners
    res, calls = stubs(SBATCH, "tulu3_70b", LEARNER_GPUS_PER_NODE="8", LEARNER_NODES="1", **SLURM_2_NODES)
    assert res.returncode == 0, res.stderr
    ray = _by_node(calls, "ray")
    assert ray["0"]["argv"][-3:-1] == ["--num-gpus", "0"] and ray["0"]["env"]["CUDA_VISIBLE_DEVICES"] == ""
    assert ray["1"]["argv"][-3:-1] == ["--num-gpus", "8"]
    assert ray["1"]["env"]["CUDA_VISIBLE_DEVICES"] == "0,1,2,3,4,5,6,7"


@pytest.mark.parametrize(
    "args,extra,message",
    [
        ([], {"LEARNER_GPUS_PER_NODE": "4", **SLURM_2_NODES}, "usage: LEARNER_GPUS_PER_NODE=K sbatch"),
        (["tiny"], SLURM_2_NODES, "set LEARNER_GPUS_PER_NODE to the RLVR learner's processes per node"),
        (["tiny"], {"LEARNER_GPUS_PER_NODE": "four", **SLURM_2_NODES}, "got 'four'"),
        (["tiny"], {"LEARNER_GPUS_PER_NODE": "4"}, "not inside a Slurm job"),
        (
            ["tiny"],
            {"LEARNER_GPUS_PER_NODE": "4", "LEARNER_NODES": "3", **SLURM_2_NODES},
            "LEARNER_NODES=3 but the job has 2 node(s)",
        ),
        (
            ["tiny"],
            {"LEARNER_GPUS_PER_NODE": "9", **SLURM_2_NODES},
            "LEARNER_GPUS_PER_NODE=9 but this node has 8 GPU(s)",
        ),
    ],
)
def test_slurm_refuses_bad_input_before_running_anything(stubs, args, extra, message):
    res, calls = stubs(SBATCH, *args, **extra)
    assert res.returncode == 2
    assert message in res.stdout + res.stderr
    assert not [c for c in calls if c["cmd"] in ("ray", "open-instruct")]


def test_slurm_failure_is_the_jobs_exit_status_and_ray_is_stopped(stubs):
    res, calls = stubs(SBATCH, "tiny", LEARNER_GPUS_PER_NODE="4", STUB_OI_RC="3", **SLURM_2_NODES)
    assert res.returncode == 3
    stops = sorted(c["env"]["SLURM_NODEID"] for c in calls if c["cmd"] == "ray" and c["argv"] == ["stop"])
    assert stops == ["0", "1"]


def test_slurm_node_that_cannot_join_ray_fails_the_job(stubs):
    res, calls = stubs(
        SBATCH, "tiny", LEARNER_GPUS_PER_NODE="4", STUB_RAY_JOIN_RC="1", RAY_JOIN_TRIES="1", **SLURM_2_NODES
    )
    assert res.returncode == 1
    assert "could not join the Ray head at gpu01:6379 after 1 tries" in res.stdout + res.stderr
    assert list(_by_node(calls, "open-instruct")) == ["0"]  # node 1 never ran the recipe


def test_ray_job_submits_the_recipe_as_the_entrypoint(stubs, tmp_path):
    args = ["tiny", "--output", "/shared/runs/x", "--set", "rlvr.wandb_run_name=a b"]
    res, calls = stubs(RAY_JOB, "--address", "http://head:8265", "--learner-gpus", "7", *args)
    assert res.returncode == 0, res.stderr
    [ray] = calls
    assert ray["argv"] == [
        "job",
        "submit",
        "--address",
        "http://head:8265",
        "--entrypoint-num-gpus",
        "7",
        "--working-dir",
        ".",
        "--",
        "open-instruct",
        "run",
        *args,
    ]
    res, calls = stubs(
        RAY_JOB, "--learner-gpus=0", "--no-wait", "--working-dir", str(tmp_path), "tiny", "--output=/abs"
    )
    assert calls[0]["argv"] == [
        "job",
        "submit",
        "--no-wait",
        "--working-dir",
        str(tmp_path),
        "--",
        "open-instruct",
        "run",
        "tiny",
        "--output=/abs",
    ]


@pytest.mark.parametrize(
    "args,message",
    [
        ([], "usage: scripts/ray_job.sh"),
        (["tiny", "--output", "runs/x"], "--output runs/x: give an absolute path on shared storage"),
        (["tiny", "--output=runs/x"], "--output runs/x: give an absolute path"),
        (["--learner-gpus", "x", "tiny"], "--learner-gpus: a whole number of GPUs, got 'x'"),
        (["--frobnicate", "tiny"], "unknown option --frobnicate"),
        (["--address"], "--address needs a value"),
    ],
)
def test_ray_job_refuses_bad_input(stubs, args, message):
    res, calls = stubs(RAY_JOB, *args)
    assert res.returncode == 2 and message in res.stderr
    assert calls == []


def test_ray_job_without_output_warns_and_submits(stubs):
    res, calls = stubs(RAY_JOB, "tiny")
    assert res.returncode == 0 and "warning: no --output" in res.stderr
    assert calls[0]["argv"][-3:] == ["open-instruct", "run", "tiny"]


def test_ray_job_command_line_is_accepted_by_the_real_ray_cli(tmp_path):
    """The real `ray job submit` parses what the script passes and only fails to reach the (absent) cluster."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    env.pop("RAY_ADDRESS", None)
    res = subprocess.run(
        [
            "bash",
            str(RAY_JOB),
            "--address",
            "http://127.0.0.1:9",
            "--learner-gpus",
            "2",
            "--no-wait",
            "tiny",
            "--output",
            "/x",
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = res.stdout + res.stderr
    assert res.returncode != 0 and "Failed to connect to Ray at address: http://127.0.0.1:9" in out, out[
        -2000:
    ]
    assert "No such option" not in out and "Usage:" not in out


# ---- GPU smoke check ------------------------------------------------------------------------------
def _gpu_check(*args: str, timeout: float = 600, **extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, **extra}
    return subprocess.run(
        ["bash", str(GPU_CHECK), *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def _lines(res) -> dict[str, str]:
    return {m.group(2): m.group(0) for m in re.finditer(r"^(PASS|FAIL|SKIP) (\w+)\b.*$", res.stdout, re.M)}


def test_gpu_check_without_cuda_skips_every_check_and_exits_0():
    # no GPU visible, whatever this machine has; the timeout guards a hang, it is not a speed claim
    res = _gpu_check(CUDA_VISIBLE_DEVICES="", timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    lines = _lines(res)
    assert list(lines) == ["attention", "sft", "dpo", "ipc", "nccl", "rlvr"]
    assert all(
        re.match(rf"SKIP {n}: no CUDA \(torch .* sees no GPU\)$", line) for n, line in lines.items()
    ), lines
    assert re.search(r"^summary: 0 passed, 0 failed, 6 skipped in \d+s \(cuda\)$", res.stdout, re.M)


def test_gpu_check_rejects_an_unknown_check():
    res = _gpu_check("--only", "sft,flash")
    assert res.returncode == 2
    assert (
        "error: --only: unknown check(s) flash (checks: attention, sft, dpo, ipc, nccl, rlvr)" in res.stderr
    )


def test_gpu_check_reports_a_failure_with_its_reason_and_exit_1(tmp_path):
    # an open_instruct whose tiny-model builder fails (first on PYTHONPATH, it shadows the real one)
    model = tmp_path / "open_instruct" / "model"
    model.mkdir(parents=True)
    (model.parent / "__init__.py").write_text("")
    (model / "__init__.py").write_text("")
    (model / "tiny.py").write_text("def build_tiny(*a, **k):\n    raise OSError('disk full (test)')\n")
    res = _gpu_check("--device", "cpu", "--only", "attention", PYTHONPATH=str(tmp_path))
    assert res.returncode == 1, res.stdout + res.stderr
    line = _lines(res)["attention"]
    assert line == "FAIL attention: building the tiny model failed: exit status 1; OSError: disk full (test)"
    logs = re.search(
        r"^summary: 0 passed, 1 failed, 5 skipped in \d+s \(cpu\); logs in (\S+)$", res.stdout, re.M
    )
    assert logs and (Path(logs.group(1)) / "tiny.log").is_file()
    shutil.rmtree(logs.group(1))


@pytest.mark.slow
def test_gpu_check_cpu_mode_runs_the_sft_dpo_and_attention_checks():
    res = _gpu_check("--device", "cpu", "--skip", "rlvr")
    assert res.returncode == 0, res.stdout + res.stderr
    lines = _lines(res)
    assert re.match(
        r"PASS attention \(\d+\.\ds\): sdpa \(CPU\), bf16: padded .* \(a leak between packed",
        lines["attention"],
    )
    assert re.match(
        r"PASS sft \(\d+\.\ds\): 8 steps, sdpa, packed, loss \d\.\d\d -> \d\.\d\d, cpu$", lines["sft"]
    )
    assert re.match(
        r"PASS dpo \(\d+\.\ds\): 4 steps, sdpa, cached reference, loss 0\.69\d\d \(ln 2\)", lines["dpo"]
    )
    assert lines["ipc"] == "SKIP ipc: needs CUDA (--device cpu)"
    assert lines["rlvr"] == "SKIP rlvr: not selected (--only/--skip)"
    assert "summary: 3 passed, 0 failed, 3 skipped" in res.stdout


@pytest.fixture
def gpu_checks_on_cpu(monkeypatch, tiny_model_dir, tmp_path):
    """gpu_checks with NCCL replaced by a memmove between the buffers and the CUDA stream by a no-op: the
    learner -> receiver flow of the nccl check runs on CPU tensors."""
    import ctypes

    import torch

    w = pytest.importorskip("vllm.distributed.device_communicators.pynccl_wrapper")
    monkeypatch.syspath_prepend(str(SCRIPTS))
    import gpu_checks

    sizes = {
        w.ncclDataTypeEnum.from_torch(d): d.itemsize for d in (torch.float32, torch.bfloat16, torch.int64)
    }

    class MemmoveNccl:
        corrupt = False

        def ncclGetVersion(self):
            return "memmove"

        def ncclGetUniqueId(self):
            return w.ncclUniqueId()

        def ncclCommInitRank(self, world, uid, rank):
            return w.ncclComm_t()

        def ncclBroadcast(self, send, recv, count, dtype, root, comm, stream):
            ctypes.memmove(recv.value, send.value, count * sizes[dtype] - (2 if self.corrupt else 0))

        def ncclCommDestroy(self, comm):
            pass

    class Stream:
        cuda_stream = 0

        def synchronize(self):
            pass

    monkeypatch.setattr(w, "NCCLLibrary", MemmoveNccl)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda *a: Stream())
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: None)
    (tmp_path / "tiny").symlink_to(tiny_model_dir)
    return gpu_checks, MemmoveNccl, tmp_path


def test_nccl_check_flow_learner_to_receiver(gpu_checks_on_cpu):
    import torch

    gpu_checks, _, work = gpu_checks_on_cpu
    detail = gpu_checks.check_nccl(work, torch.device("cpu"))
    assert "receive_broadcast: 39 tensors x 2 cases (GPU bf16, CPU fp32 -> bf16)" in detail
    assert "bit-exact; stateless_nccl rendezvous ok (disabled by vLLM at world size 1)" in detail


def test_nccl_check_catches_a_corrupted_broadcast(gpu_checks_on_cpu):
    import torch

    gpu_checks, lib, work = gpu_checks_on_cpu
    lib.corrupt = True  # the last element of every tensor arrives unset
    with pytest.raises(gpu_checks.CheckFailed, match=r"GPU bf16: \S+ differs after the broadcast"):
        gpu_checks.check_nccl(work, torch.device("cpu"))
