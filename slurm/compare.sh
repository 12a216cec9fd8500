#!/bin/bash
# The comparison study in one command: SimpleCNN and ResNet-50 trained with the same settings,
# one after the other, then the report (figures + results table) from their run folders.
#
#   sbatch slurm/compare.sh --dataset cifar10 --epochs 10       # from the repository root
#   sbatch --gres=gpu:1 --cpus-per-task=8 slurm/compare.sh     # ask for what your site needs
#   bash slurm/compare.sh --dataset synthetic --epochs 1 --tracker none
#   make compare ARGS="--dataset fashion-mnist --data-dir /usr/share/datasets/fashion-mnist"
#
# Every flag goes to train.py for both models (the script sets --model and --output-dir).
# Output: runs/compare-<stamp>/cnn, runs/compare-<stamp>/resnet50, runs/compare-<stamp>/report;
# both runs share the W&B group compare-<stamp> (override with --wandb-group).
# Under SLURM the stamp is the job id: on the warning signal train.py checkpoints, the job
# requeues itself, and the requeued job resumes the same folders (finished models are skipped).
# Environment: COMPARE_DIR overrides the study folder; PYTHON the interpreter.
#SBATCH --job-name=cifar-compare
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --time=04:00:00
#SBATCH --requeue
#SBATCH --signal=B:USR1@180
#SBATCH --output=slurm-%x-%j.out
#SBATCH --open-mode=append
set -euo pipefail

# sbatch runs a copy of this script from its spool folder: the repository is where it was
# submitted from. Run directly, it is the folder above this script.
if [[ -n "${SLURM_JOB_ID:-}" && -f "${SLURM_SUBMIT_DIR:-}/train.py" ]]; then
    cd "$SLURM_SUBMIT_DIR"
elif [[ -f "$(dirname "${BASH_SOURCE[0]}")/../train.py" ]]; then
    cd "$(dirname "${BASH_SOURCE[0]}")/.."
else
    echo "error: cannot find train.py. Submit from the repository root: cd cifar-accelerate &&" \
        "sbatch slurm/compare.sh [train.py flags]" >&2
    exit 2
fi

STAMP=${SLURM_JOB_ID:+job$SLURM_JOB_ID}
STAMP=${STAMP:-$(date +%Y%m%d-%H%M%S)}
OUT=${COMPARE_DIR:-runs/compare-$STAMP}
PYTHON=${PYTHON:-$(command -v python || command -v python3)}
if command -v accelerate >/dev/null 2>&1; then
    LAUNCH=(accelerate launch train.py)
else
    LAUNCH=("$PYTHON" train.py)
fi

# SLURM's warning signal goes to this shell (B:). Pass it on to the training processes, the
# leaves of the launcher's process tree: a launcher itself would die of SIGUSR1.
CHILD=""
STOPPING=0
leaves() {
    local kids kid
    kids=$(pgrep -P "$1" || true)
    if [[ -z "$kids" ]]; then echo "$1"; return; fi
    for kid in $kids; do leaves "$kid"; done
}
stop_training() {
    STOPPING=1
    if [[ -n "$CHILD" ]]; then
        for pid in $(leaves "$CHILD"); do kill -USR1 "$pid" 2>/dev/null || true; done
    fi
}
trap stop_training USR1 TERM

train_model() {
    local model=$1
    shift
    if [[ -f "$OUT/$model/summary.json" ]]; then
        echo "$model: finished already in $OUT/$model"
        return 0
    fi
    "${LAUNCH[@]}" --wandb-group "compare-$STAMP" "$@" \
        --model "$model" --output-dir "$OUT/$model" --resume auto &
    CHILD=$!
    local rc=0
    wait "$CHILD" || rc=$?
    while kill -0 "$CHILD" 2>/dev/null; do  # wait was cut short by the trapped signal
        rc=0
        wait "$CHILD" || rc=$?
    done
    CHILD=""
    if ((STOPPING)); then
        echo "$model: stopped at a checkpoint in $OUT/$model"
        if [[ -n "${SLURM_JOB_ID:-}" ]]; then scontrol requeue "$SLURM_JOB_ID"; fi
        exit 75
    fi
    if ((rc != 0)); then
        echo "error: training $model failed (exit $rc); its run folder is $OUT/$model" >&2
        exit "$rc"
    fi
}

mkdir -p "$OUT"
echo "comparison study in $OUT: ${LAUNCH[*]} $*"
train_model cnn "$@"
train_model resnet50 "$@"
"$PYTHON" -m cifar.report "$OUT/cnn" "$OUT/resnet50" --out "$OUT/report"
echo "report: $OUT/report/results.md"
