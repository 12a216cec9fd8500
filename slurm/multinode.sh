#!/bin/bash
# One run over several nodes: `srun` starts one `accelerate launch` per node, each with one
# process per GPU of its node, all in one process group (rank 0's node is the rendezvous).
#
#   slurm/submit slurm/multinode.sh --model resnet50 --epochs 10    # 2 nodes (default)
#   slurm/submit --nodes=4 --gres=gpu:8 slurm/multinode.sh --model cnn  # resources: sbatch's
#   CIFAR_MIXED_PRECISION=bf16 slurm/submit slurm/multinode.sh --model resnet50
#
# The run folder (runs/<job name>-job<id>) must be on a file system every node sees: all
# processes write their part of each checkpoint into it.
# Without GPUs (tests; CIFAR_NUM_PROCESSES CPU processes per machine, gloo) several tasks on
# one node can act as the machines:
#   CIFAR_TASKS_AS_MACHINES=1 sbatch --nodes=1 --ntasks=2 slurm/multinode.sh ...
# Besides the 2 nodes, the #SBATCH lines ask for what every cluster grants (one CPU a task, no
# GPU); slurm/submit adds the #GPU-SBATCH line where the partition's nodes
# have GPUs, and a job without GPUs on such a partition stops saying so (CIFAR_ALLOW_CPU=1: the
# CPU on purpose).
# Stop and requeue work as in cnn.sh: SLURM sends the warning signal to every process of the
# srun step on all nodes; all processes checkpoint together and exit 75; the job requeues and
# resumes. Settings: slurm/common.sh and docs/slurm.md.
#SBATCH --job-name=multinode
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --time=04:00:00
#SBATCH --requeue
#SBATCH --signal=USR1@180
#SBATCH --open-mode=append
#GPU-SBATCH --gres=gpu:4 --cpus-per-task=16
##SBATCH --partition=gpu
##SBATCH --account=myproject
set -euo pipefail

# sbatch runs a copy of this file: the repository is then $CIFAR_REPO, else the folder above the
# slurm/ of the script SLURM says was submitted, else the submission directory.
repo=$(dirname "$0")/..
[[ -f $repo/slurm/common.sh ]] || repo=${CIFAR_REPO:-$(scontrol show job "${SLURM_JOB_ID:-}" \
    2>/dev/null | sed -n 's#^ *Command=\(.*\)/slurm/[^/]*\.sh\( .*\)\{0,1\}$#\1#p')}
[[ -f $repo/slurm/common.sh ]] || repo=$PWD
if [[ ! -f $repo/slurm/common.sh ]]; then
    echo "error: cannot find the repository (no slurm/common.sh above the script, in" \
        "CIFAR_REPO or in $PWD): submit with CIFAR_REPO=/path/to/cifar-accelerate sbatch ..." >&2
    exit 2
fi
# shellcheck source=slurm/common.sh
source "$repo/slurm/common.sh" || exit 2

if [[ -z ${SLURM_JOB_ID:-} && ${CIFAR_DRY_RUN:-0} != 1 ]]; then
    cifar_die "multinode.sh runs under SLURM only: sbatch slurm/multinode.sh [train.py flags]"
fi
CIFAR_RUN_DIR=${CIFAR_RUN_DIR:-${CIFAR_RUNS_DIR:-runs}/$(cifar_job_label multinode)-$(cifar_stamp)}
cifar_build_train_args "$@"
cifar_begin || exit 0

# What every node's launcher needs, computed once here (on the first node).
CIFAR_GPUS=$(cifar_gpu_count)
cifar_check_gpus "$CIFAR_GPUS"
CIFAR_PER_MACHINE=$(cifar_processes_per_node "$CIFAR_GPUS")
tasks=(--kill-on-bad-exit=1)
if [[ ${CIFAR_TASKS_AS_MACHINES:-0} == 1 ]]; then
    CIFAR_MACHINES=${SLURM_NTASKS:-1}
    tasks+=(--ntasks="$CIFAR_MACHINES")
else
    CIFAR_MACHINES=${SLURM_NNODES:-1}
    tasks+=(--nodes="$CIFAR_MACHINES" --ntasks="$CIFAR_MACHINES" --ntasks-per-node=1)
fi
if ((CIFAR_GPUS > 0)); then tasks+=(--gres="gpu:$CIFAR_GPUS"); fi
cifar_step "${tasks[@]}"
if [[ -z ${CIFAR_MAIN_IP:-} && -n ${SLURM_JOB_NODELIST:-} ]]; then
    CIFAR_MAIN_IP=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)
fi
CIFAR_MAIN_IP=${CIFAR_MAIN_IP:-127.0.0.1}
CIFAR_PORT=$(cifar_port)
export CIFAR_GPUS CIFAR_PER_MACHINE CIFAR_MACHINES CIFAR_MAIN_IP CIFAR_PORT CIFAR_RUN_DIR
export CIFAR_TASKS_AS_MACHINES=${CIFAR_TASKS_AS_MACHINES:-0}
cifar_log "$CIFAR_MACHINES machine(s) x $CIFAR_PER_MACHINE process(es) ($CIFAR_GPUS GPU(s) each)," \
    "main $CIFAR_MAIN_IP:$CIFAR_PORT"

# Each task expands its own rank (SLURM_NODEID, or SLURM_PROCID in test mode) in cifar_node.
cifar_run "${CIFAR_STEP[@]}" bash -c 'source slurm/common.sh && cifar_node "$@"' \
    cifar-node "${CIFAR_TRAIN[@]}"
