#!/bin/bash
# A study (python -m cifar.study) as a job array: element i trains run i of the grid, arm by
# arm (arm i / number of seeds, seed i % number of seeds), in the study's own run folder
# DIR/<arm>/seed<k>, with the flags the local study would use. The arguments are the study's.
# The default grid (cnn resnet50) x (0 1 2) is --array=0-5.
#
#   slurm/submit slurm/sweep.sh --out runs/study -- --dataset cifar10 --epochs 10
#   slurm/submit --array=0-5 slurm/sweep.sh --out runs/width --arm "w32=--model cnn" \
#       --arm "w64=--model cnn --width 64" --seeds 0 1 2 -- --epochs 10
#   slurm/submit --array=0-5%2 slurm/sweep.sh --out runs/study  # at most 2 elements at a time
#   python -m cifar.study --out runs/study --report-only     # when the array is done
#
# Every element is requeue-safe like cnn.sh: on the warning signal it checkpoints, requeues
# itself (same element, same folder) and resumes. All runs share the W&B group of the study
# (its --name, else the folder's name). Settings: slurm/common.sh.
# The #SBATCH lines ask for what every cluster grants (one task, one CPU, no GPU), so a plain
# sbatch runs on any cluster; slurm/submit adds the #GPU-SBATCH line where the partition's nodes
# have GPUs, and a job without GPUs on such a partition stops saying so (CIFAR_ALLOW_CPU=1: the
# CPU on purpose).
#SBATCH --job-name=sweep
#SBATCH --array=0-5
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --time=04:00:00
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

index=${SLURM_ARRAY_TASK_ID:-${CIFAR_SWEEP_INDEX:-}}
if [[ ! $index =~ ^[0-9]+$ ]]; then
    cifar_die "no array index: submit with sbatch --array=0-<runs - 1> slurm/sweep.sh --out DIR" \
        "... (or set CIFAR_SWEEP_INDEX to run one element without an array)"
fi
cifar_activate
# The study names the run folder and its train.py flags (first line: the folder), and refuses
# a grid it cannot run (exit 2, with the reason).
run=$(python -m cifar.study --print-run "$index" "$@") || exit $?
mapfile -t run <<<"$run"
CIFAR_RUN_DIR=${run[0]}
cifar_log "sweep element $index: $CIFAR_RUN_DIR"
cifar_single_node sweep "${run[@]:1}"
