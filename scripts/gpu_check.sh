#!/bin/bash
# GPU smoke check, at most 10 minutes on ONE GPU, no network (docs/cluster.md, "GPU smoke check"):
#
#   scripts/gpu_check.sh [--only attention,sft,dpo,ipc,nccl,rlvr] [--skip rlvr] [--keep] [--list]
#
# One line per check (PASS <check> (<time>): ..., FAIL <check>: <reason>, SKIP <check>: <why>), then a
# summary; exit status 1 when a check failed. Without CUDA every check SKIPs and it exits 0.
# PYTHON picks the interpreter (default: this checkout's .venv, else python3 on PATH).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$here/../.venv/bin/python" ]; then PYTHON=$here/../.venv/bin/python; else PYTHON=python3; fi
fi
exec "$PYTHON" "$here/gpu_check.py" "$@"
