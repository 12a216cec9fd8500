# shellcheck shell=bash
# Shared by slurm/cnn.sh, resnet.sh, sweep.sh, multinode.sh and compare.sh; sourced, never run
# by itself. Sourcing it moves into the repository (the folder above this file). It activates
# the Python environment, names the run folder after the job, builds the `accelerate launch`
# command for the GPUs of the node (or the CPU), runs it, and turns SLURM's warning signal into
# a checkpoint and a requeue:
#
#   USR1 (sbatch --signal=B:USR1@120, time limit near) or TERM (pre-emption, scancel) reaches
#   the batch shell -> SIGTERM to the training processes (or to the study, which passes it on)
#   -> train.py checkpoints and exits 75 -> `scontrol requeue` -> the job starts again with the
#   same job id, so the same run folder, and `--resume auto` continues from that checkpoint
#   (and the same W&B run).
#
# Settings (environment variables; all optional):
#   CIFAR_VENV             a virtual environment to activate (default: .venv when it exists,
#                          else whatever python/accelerate are on PATH at submission). Make it
#                          with the torch build for the nodes' NVIDIA driver: `make setup`
#                          (CUDA 13.0, driver >= 580) or `make setup TORCH=cu126` (>= 525);
#                          docs/install.md. train.py exits 2 when the job has GPUs that torch
#                          cannot use, so these scripts never pass --allow-cpu.
#   CIFAR_ACTIVATE         shell code that activates the environment instead, e.g.
#                          "module load cuda/12.4; conda activate cifar"
#   CIFAR_TRAIN_ARGS       extra train.py flags (split on spaces); script arguments come after
#                          them and win
#   CIFAR_RUNS_DIR         where run folders go (default: runs)
#   CIFAR_RUN_DIR          the run folder itself (default: $CIFAR_RUNS_DIR/<job name>-job<id>)
#   CIFAR_NUM_PROCESSES    training processes per node (default: one per GPU; 1 without GPUs;
#                          above 1 without GPUs: CPU processes in one gloo group)
#   CIFAR_MIXED_PRECISION  accelerate launch --mixed_precision: no (default), bf16 or fp16
#                          (train.py's --mixed-precision flag also works, and wins)
#   CIFAR_ACCELERATE_ARGS  extra `accelerate launch` options (split on spaces), e.g.
#                          "--config_file accelerate_configs/multi_gpu.yaml"
#   CIFAR_PORT             rendezvous port (default: 20000 + job id % 20000)
#   CIFAR_STOP_TIMEOUT     seconds to wait for the checkpoint after a stop signal (default 100)
#   CIFAR_DRY_RUN=1        print the commands instead of running them

# Run folders, logs and train.py are named relative to the repository.
cd "$(dirname "${BASH_SOURCE[0]}")/.."
CIFAR_STOP_TIMEOUT=${CIFAR_STOP_TIMEOUT:-100}
CIFAR_FINISHED=summary.json  # the file a finished run leaves in $CIFAR_RUN_DIR
CIFAR_FIRST_ARGS=()   # train.py flags before CIFAR_TRAIN_ARGS and the script arguments
CIFAR_LAST_ARGS=()    # train.py flags after them (the script's own choices, not overridable)

cifar_log() { echo "[$(date '+%F %T')] $*"; }
cifar_die() {
    echo "error: $*" >&2
    exit 2
}

# The job's label for folder names: its name (#SBATCH --job-name, or sbatch -J), else $1.
cifar_job_label() {
    local name=${SLURM_JOB_NAME:-$1}
    if [[ -z ${SLURM_JOB_ID:-} || $name == *.sh || $name == */* ]]; then name=$1; fi
    echo "$name"
}

# A stamp for folder names: the job id (the same after a requeue), else the time.
cifar_stamp() {
    if [[ -n ${SLURM_JOB_ID:-} ]]; then echo "job$SLURM_JOB_ID"; else date +%Y%m%d-%H%M%S; fi
}

cifar_activate() {
    if [[ ${CIFAR_DRY_RUN:-0} == 1 ]]; then return 0; fi
    set +u # activation scripts (conda, modules) often read unset variables
    if [[ -n ${CIFAR_ACTIVATE:-} ]]; then
        eval "$CIFAR_ACTIVATE" || cifar_die "CIFAR_ACTIVATE failed: $CIFAR_ACTIVATE"
    elif [[ -n ${CIFAR_VENV:-} ]]; then
        if [[ -f $CIFAR_VENV/bin/activate ]]; then
            # shellcheck disable=SC1091
            source "$CIFAR_VENV/bin/activate"
        elif [[ -d $CIFAR_VENV/bin ]]; then
            PATH=$CIFAR_VENV/bin:$PATH
        else
            cifar_die "CIFAR_VENV=$CIFAR_VENV is not a virtual environment (no bin/ there)"
        fi
    elif [[ -f .venv/bin/activate ]]; then
        # shellcheck disable=SC1091
        source .venv/bin/activate
    fi
    set -u
    command -v accelerate >/dev/null ||
        cifar_die "accelerate is not on PATH ($(command -v python3 || echo no python3)). Set" \
            "CIFAR_VENV=/path/to/venv or CIFAR_ACTIVATE='conda activate env', or submit from" \
            "a shell where the environment is active (sbatch passes its PATH on)."
}

# GPUs this node gives the job: SLURM_GPUS_ON_NODE, else CUDA_VISIBLE_DEVICES, else nvidia-smi.
cifar_gpu_count() {
    local ids
    if [[ ${SLURM_GPUS_ON_NODE:-} =~ ^[0-9]+$ ]] && ((SLURM_GPUS_ON_NODE > 0)); then
        echo "$SLURM_GPUS_ON_NODE"
    elif [[ -n ${CUDA_VISIBLE_DEVICES+set} ]]; then
        IFS=, read -ra ids <<<"$CUDA_VISIBLE_DEVICES"
        if [[ ${ids[0]:-} == NoDevFiles || ${ids[0]:-} == -1 ]]; then ids=(); fi
        echo "${#ids[@]}"
    elif command -v nvidia-smi >/dev/null 2>&1; then
        { nvidia-smi -L 2>/dev/null || true; } | grep -c '^GPU' || true
    else
        echo 0
    fi
}

cifar_port() {
    if [[ -n ${CIFAR_PORT:-} ]]; then
        echo "$CIFAR_PORT"
    elif [[ -n ${SLURM_JOB_ID:-} ]]; then
        echo $((20000 + SLURM_JOB_ID % 20000))
    else
        echo 29500
    fi
}

# Sets CIFAR_LAUNCH to the `accelerate launch` command for GPUS GPUs per machine (0: CPU),
# PER_MACHINE processes per machine, MACHINES machines of which this is RANK, the main one
# being IP (listening on PORT).
#   cifar_build_launch GPUS PER_MACHINE [MACHINES RANK IP PORT]
cifar_build_launch() {
    local gpus=$1 per_machine=$2 machines=${3:-1} rank=${4:-0} ip=${5:-} port=${6:-}
    local total=$((per_machine * machines)) extra
    [[ -n $port ]] || port=$(cifar_port)
    CIFAR_LAUNCH=()
    if ((total > 1 && gpus == 0)); then
        # Accelerate starts several processes only on its multi-GPU path (torchrun); use_cpu
        # keeps them on the CPU, in one gloo group.
        CIFAR_LAUNCH=(env ACCELERATE_USE_CPU=true)
    fi
    CIFAR_LAUNCH+=(accelerate launch --num_processes "$total" --num_machines "$machines")
    if ((total > 1)); then
        CIFAR_LAUNCH+=(--multi_gpu --main_process_port "$port")
        if ((machines > 1)); then
            CIFAR_LAUNCH+=(--machine_rank "$rank" --main_process_ip "$ip" --rdzv_backend static)
        fi
    else
        # One process: the launcher's own traceback on exit 75 (a stop) is noise.
        CIFAR_LAUNCH+=(--quiet)
        if ((gpus == 0)); then CIFAR_LAUNCH+=(--cpu); fi
    fi
    read -ra extra <<<"${CIFAR_ACCELERATE_ARGS:-}"
    if [[ -n ${CIFAR_MIXED_PRECISION:-} ]]; then
        CIFAR_LAUNCH+=(--mixed_precision "$CIFAR_MIXED_PRECISION")
    elif [[ " ${extra[*]} " != *" --config_file "* && " ${extra[*]} " != *" --mixed_precision "* ]]
    then
        # Accelerate's defaults, said out loud so it does not warn about them (train.py's
        # --mixed-precision still wins over this).
        CIFAR_LAUNCH+=(--mixed_precision no --dynamo_backend no)
    fi
    CIFAR_LAUNCH+=("${extra[@]}")
}

# Processes per node: CIFAR_NUM_PROCESSES, else one per GPU, else 1.
cifar_processes_per_node() {
    local gpus=$1
    if [[ -n ${CIFAR_NUM_PROCESSES:-} ]]; then
        [[ $CIFAR_NUM_PROCESSES =~ ^[1-9][0-9]*$ ]] ||
            cifar_die "CIFAR_NUM_PROCESSES=$CIFAR_NUM_PROCESSES is not a positive number"
        echo "$CIFAR_NUM_PROCESSES"
    elif ((gpus > 0)); then
        echo "$gpus"
    else
        echo 1
    fi
}

# Sets CIFAR_TRAIN to the train.py flags: CIFAR_FIRST_ARGS, CIFAR_TRAIN_ARGS, the script
# arguments ("$@"), CIFAR_LAST_ARGS, then --output-dir $CIFAR_RUN_DIR --resume auto.
cifar_build_train_args() {
    local arg extra
    for arg in "$@"; do
        case $arg in
            --output-dir | --output-dir=* | --resume | --resume=*)
                cifar_die "$arg: the job script sets --output-dir (from the job id, so a" \
                    "requeued job finds its run folder) and --resume auto. Choose the folder" \
                    "with CIFAR_RUN_DIR=... (or CIFAR_RUNS_DIR=... for the parent) instead."
                ;;
        esac
    done
    read -ra extra <<<"${CIFAR_TRAIN_ARGS:-}"
    CIFAR_TRAIN=("${CIFAR_FIRST_ARGS[@]}" "${extra[@]}" "$@" "${CIFAR_LAST_ARGS[@]}"
        --output-dir "$CIFAR_RUN_DIR" --resume auto)
}

cifar_finished() { [[ -f $CIFAR_RUN_DIR/$CIFAR_FINISHED ]]; }

# ---- running the launcher: signals, waiting, verdict ---------------------------------------
_cifar_stop=0         # a stop signal arrived
_cifar_delivered=0    # and was passed on to the training processes
_cifar_pid=""         # the launcher (or srun, or the study)
_cifar_trainers=""    # the processes to wait for once the signal was passed on
_cifar_forward=children

_cifar_on_signal() {
    if ((!_cifar_stop)); then
        cifar_log "got SIG$1: asking the training processes to checkpoint and stop"
    fi
    _cifar_stop=1
    _cifar_deliver
}

_cifar_descendants() {
    local kid
    for kid in $(pgrep -P "$1" || true); do
        echo "$kid"
        _cifar_descendants "$kid"
    done
}

# Pass the stop on: SIGTERM to the launcher's children (the training processes; the launcher
# itself would die of SIGUSR1, and the single-process launcher does not forward signals), for
# srun to every process of the job's steps on all nodes (each node's wrapper traps it), or to a
# process that stops its own runs (the study; its runs' launchers may die before train.py has
# saved its checkpoint, so every process below it is waited for).
_cifar_deliver() {
    local kids
    if ((_cifar_delivered)) || [[ -z $_cifar_pid ]]; then return 0; fi
    case $_cifar_forward in
        steps)
            # Only once srun's step exists (before that, scancel would signal nothing).
            if squeue -h -s -j "$SLURM_JOB_ID" -o %i 2>/dev/null |
                grep -Ev 'batch|extern' >/dev/null; then
                scancel --signal=TERM "$SLURM_JOB_ID" && _cifar_delivered=1
            fi
            ;;
        process)
            _cifar_trainers=$(_cifar_descendants "$_cifar_pid")
            kill -TERM "$_cifar_pid" 2>/dev/null || true
            _cifar_delivered=1
            ;;
        children)
            kids=$(pgrep -P "$_cifar_pid" || true)
            if [[ -n $kids ]]; then
                _cifar_trainers=$kids
                # shellcheck disable=SC2086
                kill -TERM $kids 2>/dev/null || true
                _cifar_delivered=1
            fi
            ;;
    esac
}

# After a stop: wait for training processes that outlive the launcher (a launcher killed by
# SLURM's own SIGTERM leaves its child running), so the job does not end mid-checkpoint.
_cifar_wait_trainers() {
    local deadline=$((SECONDS + CIFAR_STOP_TIMEOUT)) pgid pid alive
    pgid=$(ps -o pgid= -p $$ | tr -d ' ')
    while ((SECONDS < deadline)); do
        alive=""
        for pid in $_cifar_trainers; do
            if kill -0 "$pid" 2>/dev/null; then alive=1; fi
        done
        if [[ -z $alive ]] && ! pgrep -g "$pgid" -f 'train\.py' >/dev/null; then return 0; fi
        sleep 1
    done
    cifar_log "warning: training processes still running ${CIFAR_STOP_TIMEOUT} s after the stop"
}

# Run COMMAND in the background and supervise it. Returns 0 when the run finished
# ($CIFAR_FINISHED exists), 75 when a stop signal ended it before that, else the command's exit
# code.
#   cifar_supervise children|steps|process COMMAND...
cifar_supervise() {
    _cifar_forward=$1
    shift
    if [[ ${CIFAR_DRY_RUN:-0} == 1 ]]; then
        echo "would run: $*"
        return 0
    fi
    trap '_cifar_on_signal USR1' USR1
    trap '_cifar_on_signal TERM' TERM
    "$@" &
    _cifar_pid=$!
    local rc
    while :; do
        rc=0
        if ((_cifar_stop && !_cifar_delivered)); then
            # The signal came before the training processes existed: try again each second.
            _cifar_deliver
            sleep 1 &
            wait $! || true
            if kill -0 "$_cifar_pid" 2>/dev/null; then continue; fi
        fi
        wait "$_cifar_pid" || rc=$?
        # wait also returns (above 128) when a trapped signal arrives: go on waiting.
        if ! kill -0 "$_cifar_pid" 2>/dev/null; then break; fi
    done
    if ((_cifar_stop)); then _cifar_wait_trainers; fi
    # Later signals (requeue's SIGTERM) must not cut the verdict short.
    trap '_cifar_stop=1' USR1 TERM
    if cifar_finished; then
        return 0
    elif ((_cifar_stop || rc == 75)); then
        return 75
    fi
    return "$rc"
}

# Requeue this job (stopped before the end); the next run resumes from the checkpoint. Only a
# job still RUNNING is requeued (a warning signal: --signal=B:USR1@120, scancel --signal): one
# that SLURM is already ending (scancel, pre-emption, the time limit itself: COMPLETING) is
# left to SLURM, so that a plain scancel still cancels. Exits 75.
cifar_requeue() {
    local state=""
    trap '' USR1 TERM # scontrol requeue sends SIGTERM to this job: exit instead of dying
    if [[ -n ${SLURM_JOB_ID:-} ]]; then
        state=$(scontrol show job -o "$SLURM_JOB_ID" 2>/dev/null |
            grep -o 'JobState=[A-Z_]*' | head -n1 | cut -d= -f2 || true)
    fi
    if [[ $state == RUNNING ]] && scontrol requeue "$SLURM_JOB_ID"; then
        cifar_log "stopped at a checkpoint; job $SLURM_JOB_ID requeued: it resumes in" \
            "$CIFAR_RUN_DIR"
    else
        cifar_log "stopped at a checkpoint in $CIFAR_RUN_DIR; not requeued" \
            "${state:+(job state $state)}. Continue with: CIFAR_RUN_DIR=$CIFAR_RUN_DIR" \
            "sbatch <the same script and arguments>"
    fi
    exit 75
}

cifar_banner() {
    cifar_log "job ${SLURM_JOB_ID:-none} (${SLURM_JOB_NAME:-no name}) on $(hostname)," \
        "restart ${SLURM_RESTART_COUNT:-0}, run folder $CIFAR_RUN_DIR"
}

# Activate the environment and log the job. False when $CIFAR_RUN_DIR holds a finished run.
cifar_begin() {
    cifar_activate
    cifar_banner
    if cifar_finished; then
        cifar_log "$CIFAR_RUN_DIR/$CIFAR_FINISHED exists: this run finished already"
        return 1
    fi
}

# Set CIFAR_LAUNCH for this node: one process per GPU (or the CPU, or CIFAR_NUM_PROCESSES).
cifar_node_launch() {
    local gpus procs
    gpus=$(cifar_gpu_count)
    procs=$(cifar_processes_per_node "$gpus")
    cifar_build_launch "$gpus" "$procs"
    cifar_log "$gpus GPU(s), $procs process(es)"
}

# Run COMMAND supervised (cifar_supervise MODE COMMAND...) and act on how it ended: requeue
# after a stop, else log and return its exit code.
#   cifar_run children|steps|process COMMAND...
cifar_run() {
    local rc=0
    if [[ ${CIFAR_DRY_RUN:-0} == 1 ]]; then
        cifar_supervise "$@"
        return 0
    fi
    cifar_log "running: ${*:2}"
    cifar_supervise "$@" || rc=$?
    case $rc in
        0) cifar_log "done: $CIFAR_RUN_DIR/$CIFAR_FINISHED" ;;
        75) cifar_requeue ;;
        *) cifar_log "training failed (exit $rc); run folder $CIFAR_RUN_DIR" ;;
    esac
    return "$rc"
}

# One node: `accelerate launch` with one process per GPU (or the CPU), supervised; requeue on
# a stop signal. CIFAR_RUN_DIR defaults to $CIFAR_RUNS_DIR/<job name>-job<id>.
#   cifar_single_node LABEL [train.py flags...]
cifar_single_node() {
    CIFAR_RUN_DIR=${CIFAR_RUN_DIR:-${CIFAR_RUNS_DIR:-runs}/$1-$(cifar_stamp)}
    shift
    cifar_build_train_args "$@"
    cifar_begin || return 0
    cifar_node_launch
    cifar_run children "${CIFAR_LAUNCH[@]}" train.py "${CIFAR_TRAIN[@]}"
}

# cifar_single_node for one model, named after it (or the job name).
#   cifar_model_job MODEL [train.py flags...]
cifar_model_job() {
    CIFAR_FIRST_ARGS=(--model "$1")
    cifar_single_node "$(cifar_job_label "$1")" "${@:2}"
}

# One machine of a multi-node run, inside `srun`: rank from SLURM_NODEID (one task per node),
# or from SLURM_PROCID with CIFAR_TASKS_AS_MACHINES=1 (several tasks on one node each act as a
# machine: tests). The batch shell exports CIFAR_GPUS, CIFAR_PER_MACHINE, CIFAR_MACHINES,
# CIFAR_MAIN_IP, CIFAR_PORT and CIFAR_RUN_DIR. Exits 75 when stopped before the end.
#   cifar_node [train.py flags...]
cifar_node() {
    local rank=${SLURM_NODEID:-0} rc=0
    if [[ ${CIFAR_TASKS_AS_MACHINES:-0} == 1 ]]; then rank=${SLURM_PROCID:-0}; fi
    cifar_build_launch "$CIFAR_GPUS" "$CIFAR_PER_MACHINE" "$CIFAR_MACHINES" "$rank" \
        "$CIFAR_MAIN_IP" "$CIFAR_PORT"
    echo "machine $rank of $CIFAR_MACHINES on $(hostname): ${CIFAR_LAUNCH[*]} train.py $*"
    cifar_supervise children "${CIFAR_LAUNCH[@]}" train.py "$@" || rc=$?
    exit "$rc"
}
