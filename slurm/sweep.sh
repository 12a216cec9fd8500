#!/bin/bash
# A sweep as a job array: every element trains one (model, seed) of the grid
# CIFAR_SWEEP_MODELS x CIFAR_SWEEP_SEEDS on one node (all its GPUs), in its own run folder
# runs/sweep-<array job id>/<model>-seed<seed>. Element i is model i / (number of seeds),
# seed i % (number of seeds); the default grid (cnn resnet50) x (0 1 2) is --array=0-5.
#
#   sbatch slurm/sweep.sh --dataset cifar10 --epochs 10        # arguments go to every element
#   CIFAR_SWEEP_MODELS=cnn CIFAR_SWEEP_SEEDS="0 1 2 3" sbatch --array=0-3 slurm/sweep.sh
#   sbatch --array=0-5%2 slurm/sweep.sh                        # at most 2 elements at a time
#   python -m cifar.report runs/sweep-<array job id>/* --out runs/sweep-<array job id>/report
#
# Every element is requeue-safe like cnn.sh: on the warning signal it checkpoints, requeues
# itself (same element, same folder) and resumes. All elements share the W&B group
# sweep-<array job id>. Settings: slurm/common.sh (CIFAR_SWEEP_DIR moves the sweep folder).
#SBATCH --job-name=sweep
#SBATCH --array=0-5
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --time=04:00:00
#SBATCH --requeue
#SBATCH --signal=B:USR1@120
#SBATCH --output=logs/%x-%A_%a.out
#SBATCH --open-mode=append
##SBATCH --partition=gpu
##SBATCH --account=myproject
set -euo pipefail

# sbatch runs a copy of this file: find the repository ($CIFAR_REPO, else the folder sbatch
# was called from, else the folder above this file).
for CIFAR_REPO in "${CIFAR_REPO:-}" "$PWD" "$(dirname "$0")/.."; do
    [[ -f $CIFAR_REPO/slurm/common.sh ]] && break
done
cd "$CIFAR_REPO" 2>/dev/null && [[ -f slurm/common.sh ]] || {
    echo "error: cannot find the repository: submit from its root, or set CIFAR_REPO" >&2
    exit 2
}
# shellcheck source=slurm/common.sh
source slurm/common.sh

read -ra models <<<"${CIFAR_SWEEP_MODELS:-cnn resnet50}"
read -ra seeds <<<"${CIFAR_SWEEP_SEEDS:-0 1 2}"
size=$((${#models[@]} * ${#seeds[@]}))
index=${SLURM_ARRAY_TASK_ID:-${CIFAR_SWEEP_INDEX:-}}
if ((size == 0)); then cifar_die "CIFAR_SWEEP_MODELS and CIFAR_SWEEP_SEEDS must not be empty"; fi
if [[ ! $index =~ ^[0-9]+$ ]] || ((index >= size)); then
    cifar_die "array index '${index}' is not in the grid of $size (${#models[@]} model(s) x" \
        "${#seeds[@]} seed(s)): submit with sbatch --array=0-$((size - 1)) slurm/sweep.sh" \
        "(or set CIFAR_SWEEP_INDEX to run one element without an array)"
fi
model=${models[index / ${#seeds[@]}]}
seed=${seeds[index % ${#seeds[@]}]}
sweep=sweep-${SLURM_ARRAY_JOB_ID:-$(cifar_stamp)}
CIFAR_SWEEP_DIR=${CIFAR_SWEEP_DIR:-${CIFAR_RUNS_DIR:-runs}/$sweep}
CIFAR_RUN_DIR=$CIFAR_SWEEP_DIR/$model-seed$seed
cifar_log "sweep element $index of $size: --model $model --seed $seed"

CIFAR_FIRST_ARGS=(--wandb-group "$sweep")
CIFAR_LAST_ARGS=(--model "$model" --seed "$seed")
cifar_single_node "$model-seed$seed" "$@"
