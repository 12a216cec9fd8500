#!/bin/bash
# SimpleCNN on one node, one training process per GPU of the node, with `accelerate launch`.
#
#   python train.py --prepare-only                      # first, on a login node with network
#   slurm/submit slurm/cnn.sh                           # from any directory
#   slurm/submit slurm/cnn.sh --dataset cifar100 --epochs 30  # arguments go to train.py
#   slurm/submit --gres=gpu:4 --time=30 -p gpu -A myproj slurm/cnn.sh  # resources: sbatch's
#   sbatch slurm/cnn.sh --epochs 1                      # as it is: no GPU, one CPU
#   CIFAR_VENV=~/venvs/cifar CIFAR_TRAIN_ARGS="--lr 0.1" slurm/submit slurm/cnn.sh
#
# The #SBATCH lines ask for what every cluster grants (one task, one CPU, no GPU), so a plain
# sbatch runs on any cluster; slurm/submit adds the #GPU-SBATCH line where the partition's nodes
# have GPUs, and a job without GPUs on such a partition stops saying so (CIFAR_ALLOW_CPU=1: the
# CPU on purpose).
# Log: logs/<job name>-<job id>.out in the repository (requeued runs append to it).
# Run folder: runs/<job name>-job<job id> (CIFAR_RUNS_DIR or CIFAR_RUN_DIR move it).
# Near the time limit SLURM sends USR1; train.py checkpoints, the job requeues itself and the
# next run resumes (--resume auto) in the same folder. Settings: slurm/common.sh, docs/slurm.md.
#SBATCH --job-name=cnn
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --time=01:00:00
#SBATCH --requeue
#SBATCH --signal=USR1@120
#SBATCH --open-mode=append
#GPU-SBATCH --gres=gpu:1 --cpus-per-task=8
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

cifar_model_job cnn "$@"
