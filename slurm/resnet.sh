#!/bin/bash
# ResNet-50 (ImageNet weights, transfer learning) on one node, one training process per GPU
# of the node, with `accelerate launch`.
#
#   python train.py --model resnet50 --prepare-only     # first, on a login node with network
#   sbatch slurm/resnet.sh                              # from the repository root
#   sbatch slurm/resnet.sh --freeze layer4 --epochs 10  # arguments go to train.py
#   sbatch --gres=gpu:4 --time=8:00:00 -p gpu -A myproj slurm/resnet.sh  # resources: sbatch
#   CIFAR_VENV=~/venvs/cifar CIFAR_MIXED_PRECISION=bf16 sbatch slurm/resnet.sh
#
# Log: logs/<job name>-<job id>.out (logs/ is in the repository; requeued runs append to it).
# Run folder: runs/<job name>-job<job id> (CIFAR_RUNS_DIR or CIFAR_RUN_DIR move it).
# Near the time limit SLURM sends USR1; train.py checkpoints, the job requeues itself and the
# next run resumes (--resume auto) in the same folder. Settings: slurm/common.sh, docs/slurm.md.
#SBATCH --job-name=resnet50
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --time=04:00:00
#SBATCH --requeue
#SBATCH --signal=USR1@120
#SBATCH --output=logs/%x-%j.out
#SBATCH --open-mode=append
##SBATCH --partition=gpu
##SBATCH --account=myproject
set -euo pipefail

# sbatch runs a copy of this file: the repository is then $CIFAR_REPO or where sbatch was called.
repo=$(dirname "$0")/..
[[ -f $repo/slurm/common.sh ]] || repo=${CIFAR_REPO:-$PWD}
# shellcheck source=slurm/common.sh
source "$repo/slurm/common.sh" || exit 2

cifar_model_job resnet50 "$@"
