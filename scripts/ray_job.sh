#!/bin/bash
# Submits a recipe run to a running Ray cluster as a Ray job (docs/cluster.md, "Launching on a cluster"):
#
#   scripts/ray_job.sh [--address http://HEAD:8265] [--learner-gpus K] [--no-wait] \
#       RECIPE --output /shared/runs/NAME [more `open-instruct run` args]
#
# = ray job submit --working-dir . [--entrypoint-num-gpus K] -- open-instruct run RECIPE ARGS...
#
# The job's entrypoint is the whole recipe run, on ONE node: every stage's learner processes run
# there (torchrun on that node's GPUs); the RLVR stage's vLLM engines are Ray actors placed on any
# node's free GPUs. Without --learner-gpus the entrypoint runs on the head node and sees all its GPUs
# (start the head with CUDA_VISIBLE_DEVICES/--num-gpus leaving the learner's GPUs out of Ray); with
# --learner-gpus K Ray reserves K GPUs on a node that has them for the whole job (K = the most
# processes any stage runs; engines then go elsewhere). A learner over several nodes needs the
# one-command-per-node path: scripts/slurm_recipe.sbatch, or torchrun by hand.
#
# The working dir (default: the current directory, .gitignore respected) is uploaded with the job, so
# a relative recipe or data path resolves as it does here; the run directory must be an absolute path
# on storage the job's node keeps (the uploaded copy is temporary). The cluster's nodes need
# open-instruct installed. --address defaults to $RAY_ADDRESS (ray job submit's own rule).
#   OPEN_INSTRUCT  the command the job runs (default: open-instruct)
set -euo pipefail

usage="usage: scripts/ray_job.sh [--address URL] [--learner-gpus K] [--no-wait] [--working-dir DIR] RECIPE --output /abs/run/dir [open-instruct run args]"
fail() {
    echo "ray_job.sh: $*" >&2
    exit 2
}
submit=()
workdir=.
while [ $# -gt 0 ]; do
    case "$1" in
        --address | --learner-gpus | --working-dir) [ $# -ge 2 ] || fail "$1 needs a value; $usage" ;;&
        --address) submit+=(--address "$2"); shift 2 ;;
        --address=*) submit+=(--address "${1#*=}"); shift ;;
        --learner-gpus | --learner-gpus=*)
            if [ "$1" = --learner-gpus ]; then gpus=$2; shift 2; else gpus=${1#*=}; shift; fi
            case "$gpus" in '' | *[!0-9]*) fail "--learner-gpus: a whole number of GPUs, got '$gpus'" ;; esac
            [ "$gpus" = 0 ] || submit+=(--entrypoint-num-gpus "$gpus") ;;
        --working-dir) workdir=$2; shift 2 ;;
        --working-dir=*) workdir=${1#*=}; shift ;;
        --no-wait) submit+=(--no-wait); shift ;;
        -h | --help) echo "$usage"; exit 0 ;;
        --) shift; break ;;
        -*) fail "unknown option $1; $usage" ;;
        *) break ;;
    esac
done
[ $# -ge 1 ] || fail "$usage"
[ -d "$workdir" ] || fail "--working-dir: $workdir is not a directory"

# The run directory: --output must be absolute (the job runs in a temporary copy of the working dir).
output=""
prev=""
for arg in "$@"; do
    [ "$prev" = --output ] && output=$arg
    case "$arg" in --output=*) output=${arg#--output=} ;; esac
    prev=$arg
done
if [ -n "$output" ] && [ "${output#/}" = "$output" ]; then
    fail "--output $output: give an absolute path on shared storage (the job runs in a temporary copy of $workdir)"
fi
if [ -z "$output" ]; then
    echo "ray_job.sh: warning: no --output; the recipe's output_dir is used, and a relative one lands in the job's temporary copy of $workdir" >&2
fi

exec ray job submit "${submit[@]}" --working-dir "$workdir" -- ${OPEN_INSTRUCT:-open-instruct} run "$@"
