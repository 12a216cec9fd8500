#!/bin/bash
# The comparison in one command: SimpleCNN and ResNet-50 trained with the same settings, one
# after the other (a study, python -m cifar.study, with the arms cnn and resnet50 and seed 0),
# then the study's statistics and the report (figures + results table) from their run folders.
#
#   slurm/submit slurm/compare.sh --dataset cifar10 --epochs 10  # from any directory
#   slurm/submit --gres=gpu:2 --cpus-per-task=16 slurm/compare.sh  # what your site needs
#   slurm/submit slurm/compare.sh --seeds 0 1 2 -- --dataset cifar10 # study options before --
#   bash slurm/compare.sh --dataset synthetic --epochs 1 --tracker none
#   make compare ARGS="--dataset fashion-mnist --data-dir /usr/share/datasets/fashion-mnist"
#
# Without --, every argument is a train.py flag for both models (the study sets --seed,
# --output-dir, --resume and --wandb-group). With --, what comes before goes to the study
# (--seeds, --name, --arm) and what comes after to train.py.
# Output: runs/compare-<stamp>/{cnn,resnet50}/seed0, study.md and study.json there, and
# runs/compare-<stamp>/report; all runs share the W&B group compare-<stamp> (the folder's name;
# --name before -- changes it). The stamp is job<id> under SLURM (CIFAR_RUN_DIR or COMPARE_DIR
# choose the folder). On the warning signal the run checkpoints, the job requeues itself and
# resumes the same folders (finished runs are skipped). Settings: slurm/common.sh and
# docs/slurm.md.
# The #SBATCH lines ask for what every cluster grants (one task, one CPU, no GPU), so a plain
# sbatch runs on any cluster; slurm/submit adds the #GPU-SBATCH line where the partition's nodes
# have GPUs, and a job without GPUs on such a partition stops saying so (CIFAR_ALLOW_CPU=1: the
# CPU on purpose).
#SBATCH --job-name=compare
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --time=04:00:00
#SBATCH --requeue
#SBATCH --signal=USR1@180
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

label=$(cifar_job_label compare)
CIFAR_RUN_DIR=${CIFAR_RUN_DIR:-${COMPARE_DIR:-${CIFAR_RUNS_DIR:-runs}/$label-$(cifar_stamp)}}
CIFAR_FINISHED=study.json
separated=0
for arg in "$@"; do [[ $arg != -- ]] || separated=1; done
((separated)) || set -- -- "$@"
if cifar_begin; then
    cifar_node_launch
    cifar_run "${CIFAR_STEP[@]}" python -m cifar.study --out "$CIFAR_RUN_DIR" --seeds 0 \
        --launcher "${CIFAR_LAUNCH[*]}" "$@"
fi
if [[ ${CIFAR_DRY_RUN:-0} != 1 && ! -f $CIFAR_RUN_DIR/report/results.md ]]; then
    python -m cifar.report "$CIFAR_RUN_DIR"/*/seed* --out "$CIFAR_RUN_DIR/report"
    cifar_log "report: $CIFAR_RUN_DIR/report/results.md"
fi
