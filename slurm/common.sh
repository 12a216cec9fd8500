# shellcheck shell=bash
# Shared by slurm/cnn.sh, resnet.sh, sweep.sh, multinode.sh and compare.sh; sourced, never run
# by itself. Sourcing it moves into the repository (the folder above this file). It activates
# the Python environment, names the run folder after the job, builds the `accelerate launch`
# command for the GPUs of the node (or the CPU; `python -m cifar.devices` counts them), runs it
# as a job step (`srun`, under slurm/step.py) and turns a stop into a checkpoint and a requeue:
#
#   USR1 (#SBATCH --signal=USR1@120, time limit near) or TERM (scancel, pre-emption) reaches
#   every process of the step -> train.py checkpoints and exits 75 (slurm/step.py, the step's
#   first process, waits for it) -> the job still RUNNING (the warning): `scontrol requeue` ->
#   the job starts again with the same job id, so the same run folder, and `--resume auto`
#   continues from that checkpoint (and the same W&B run). A job SLURM is ending (scancel) is
#   left to SLURM.
#
# Settings (environment variables, all optional; the table in docs/slurm.md says more):
#   CIFAR_VENV             virtual environment to activate (default: .venv when it exists, else
#                          python/accelerate on PATH at submission), with the torch build for
#                          the nodes' NVIDIA driver (docs/install.md; train.py exits 2 when torch
#                          cannot use the job's GPUs, so these scripts never pass --allow-cpu)
#   CIFAR_ACTIVATE         shell code that activates it instead ("module load cuda; conda ...")
#   CIFAR_TRAIN_ARGS       train.py flags (split on spaces) before the script's arguments
#   CIFAR_RUNS_DIR         where run folders go (runs); CIFAR_RUN_DIR: the run folder itself
#   CIFAR_NUM_PROCESSES    per node (one per GPU, or 1; more without GPUs: CPU processes, gloo)
#   CIFAR_MIXED_PRECISION  accelerate launch --mixed_precision: no, bf16, fp16 (train.py's wins)
#   CIFAR_ACCELERATE_ARGS  extra `accelerate launch` options (split on spaces)
#   CIFAR_PORT             rendezvous port (default: 20000 + job id % 20000)
#   CIFAR_ALLOW_CPU=1      train on the CPU even where the job's partition has GPUs
#   CIFAR_DRY_RUN=1        print the commands instead of running them

# Empty arrays ("${a[@]}") under `set -u` need bash 4.4 or newer; 4.2 (RHEL 7) stops on them.
if ((BASH_VERSINFO[0] * 100 + BASH_VERSINFO[1] < 404)); then
    echo "cifar-accelerate's SLURM scripts need bash 4.4 or newer; this is bash $BASH_VERSION." \
        "Load a newer bash (for example \`module load bash\`) or run train.py directly." >&2
    exit 2
fi

# Run folders, logs and train.py are named relative to the repository.
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2

# A job whose log is SLURM's default (no --output: slurm-<id>.out in the submission directory,
# wherever that was) writes its own output to logs/<job name>-<id>.out here, appending after a
# requeue; the default file keeps the log's path and whatever SLURM itself reports (a time
# limit, a cancellation). With --output (slurm/submit passes one) that file is the log.
cifar_log_here() {
    local id=${SLURM_JOB_ID:-} out log
    [[ -n $id ]] || return 0
    [[ -z ${SLURM_ARRAY_JOB_ID:-} ]] || id=${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID:-}
    out=$(readlink "/proc/$$/fd/1" 2>/dev/null) || return 0
    [[ ${out##*/} == "slurm-$id.out" ]] || return 0
    log=logs/${SLURM_JOB_NAME:-job}-$id.out
    if mkdir -p logs 2>/dev/null && : >>"$log" 2>/dev/null; then
        echo "[$(date '+%F %T')] job $SLURM_JOB_ID: log $PWD/$log"
        exec >>"$log" 2>&1
    else
        echo "[$(date '+%F %T')] cannot write $PWD/$log: the log stays in $out"
    fi
}
cifar_log_here
CIFAR_FINISHED=summary.json  # the file a finished run leaves in $CIFAR_RUN_DIR
CIFAR_FIRST_ARGS=()   # train.py flags before CIFAR_TRAIN_ARGS and the script arguments
CIFAR_LAST_ARGS=()    # train.py flags after them (the script's own choices, not overridable)

cifar_log() { echo "[$(date '+%F %T')] $*"; }
cifar_die() { echo "error: $*" >&2; exit 2; }

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

# Activate the Python environment (in dry runs too: Python counts the GPUs).
cifar_activate() {
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

# GPUs this node gives the job, as train.py counts them (SLURM's variables, CUDA_VISIBLE_DEVICES,
# nvidia-smi).
cifar_gpu_count() { python -m cifar.devices; }

# The rendezvous port: CIFAR_PORT, else one per job (jobs sharing a node do not collide).
cifar_port() {
    if [[ -z ${SLURM_JOB_ID:-} ]]; then echo "${CIFAR_PORT:-29500}"; return; fi
    echo "${CIFAR_PORT:-$((20000 + SLURM_JOB_ID % 20000))}"
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

# Processes per node for GPUS GPUs: CIFAR_NUM_PROCESSES, else one per GPU, else 1.
cifar_processes_per_node() {
    local procs=${CIFAR_NUM_PROCESSES:-$(($1 > 0 ? $1 : 1))}
    [[ $procs =~ ^[1-9][0-9]*$ ]] || cifar_die "CIFAR_NUM_PROCESSES=$procs is not a positive number"
    echo "$procs"
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

# Sets CIFAR_STEP to the start of the command that runs the training as a job step: srun with
# OPTIONS under SLURM (its warning signal reaches the processes of steps, not this shell), then
# slurm/step.py, which outlives every process of the run.
#   cifar_step [srun options...]
cifar_step() {
    CIFAR_STEP=()
    if [[ -n ${SLURM_JOB_ID:-} ]]; then
        # srun does not take --cpus-per-task over from sbatch (SLURM 22.05 to 23.02).
        CIFAR_STEP=(srun "$@" ${SLURM_CPUS_PER_TASK:+"--cpus-per-task=$SLURM_CPUS_PER_TASK"})
    fi
    CIFAR_STEP+=(python slurm/step.py)
}

# With CIFAR_DRY_RUN=1: print COMMAND and succeed; else fail.
cifar_dry() { [[ ${CIFAR_DRY_RUN:-0} == 1 ]] && echo "would run: $*"; }

# Requeue this job (stopped before the end); the next run resumes from the checkpoint. Only a
# job still RUNNING is requeued (a warning signal: --signal=USR1@120, scancel --signal): one
# that SLURM is already ending (scancel, pre-emption, the time limit itself: COMPLETING) is
# left to SLURM, so that a plain scancel still cancels. Exits 75.
cifar_requeue() {
    local state=""
    trap '' TERM # scontrol requeue sends SIGTERM to this job: exit instead of dying
    [[ -z ${SLURM_JOB_ID:-} ]] || state=$(squeue -h -j "$SLURM_JOB_ID" -o %T 2>/dev/null || true)
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

# Activate the environment and log the job. False when $CIFAR_RUN_DIR holds a finished run.
cifar_begin() {
    cifar_activate
    cifar_log "job ${SLURM_JOB_ID:-none} (${SLURM_JOB_NAME:-no name}) on $(hostname)," \
        "restart ${SLURM_RESTART_COUNT:-0}, run folder $CIFAR_RUN_DIR"
    if cifar_finished; then
        cifar_log "$CIFAR_RUN_DIR/$CIFAR_FINISHED exists: this run finished already"
        return 1
    fi
}

# A job without GPUs (GPUS = 0) on a partition whose nodes have them was submitted without
# asking for one (a plain `sbatch`, the scripts ask for none): stop in seconds, saying how to ask,
# instead of training on the CPU for hours. CIFAR_ALLOW_CPU=1 trains on the CPU on purpose.
cifar_check_gpus() {
    local gres
    [[ $1 == 0 && -n ${SLURM_JOB_ID:-} && ${CIFAR_ALLOW_CPU:-0} != 1 ]] || return 0
    gres=$({ sinfo -h -p "${SLURM_JOB_PARTITION:-}" -o %G 2>/dev/null || true; } |
        grep -o 'gpu[^,]*' | head -n1 || true)
    [[ -z $gres ]] || cifar_die "job $SLURM_JOB_ID has no GPU, but the nodes of partition" \
        "${SLURM_JOB_PARTITION:-} have them ($gres), and the job scripts ask for none themselves." \
        "Submit with slurm/submit (it asks for what the script's #GPU-SBATCH line names where" \
        "there are GPUs), e.g. slurm/submit slurm/cnn.sh ARGS, or sbatch --gres=gpu:1" \
        "--cpus-per-task=8 slurm/cnn.sh ARGS; to train on the CPU on purpose, set CIFAR_ALLOW_CPU=1."
}

# Set CIFAR_LAUNCH for this node (one process per GPU, or the CPU, or CIFAR_NUM_PROCESSES) and
# CIFAR_STEP for one task.
cifar_node_launch() {
    local gpus procs
    gpus=$(cifar_gpu_count)
    cifar_check_gpus "$gpus"
    procs=$(cifar_processes_per_node "$gpus")
    cifar_build_launch "$gpus" "$procs"
    cifar_step --ntasks=1
    cifar_log "$gpus GPU(s), $procs process(es)"
}

# Run COMMAND (the step) and act on how it ended: requeue after a stop, else log and return its
# exit code.
#   cifar_run COMMAND...
cifar_run() {
    local rc=0
    if cifar_dry "$@"; then return 0; fi
    cifar_log "running: $*"
    # scancel's SIGTERM reaches this shell too: wait for the step's checkpoint all the same.
    trap 'cifar_log "got SIGTERM: waiting for the training to stop"' TERM
    "$@" || rc=$?
    if cifar_finished; then rc=0; fi
    case $rc in
        0) cifar_log "done: $CIFAR_RUN_DIR/$CIFAR_FINISHED" ;;
        75) cifar_requeue ;;
        *) cifar_log "training failed (exit $rc); run folder $CIFAR_RUN_DIR" ;;
    esac
    return "$rc"
}

# One node: `accelerate launch` with one process per GPU (or the CPU) as a job step; requeue
# after a stop. CIFAR_RUN_DIR defaults to $CIFAR_RUNS_DIR/<job name>-job<id>.
#   cifar_single_node LABEL [train.py flags...]
cifar_single_node() {
    CIFAR_RUN_DIR=${CIFAR_RUN_DIR:-${CIFAR_RUNS_DIR:-runs}/$1-$(cifar_stamp)}
    shift
    cifar_build_train_args "$@"
    cifar_begin || return 0
    cifar_node_launch
    cifar_run "${CIFAR_STEP[@]}" "${CIFAR_LAUNCH[@]}" train.py "${CIFAR_TRAIN[@]}"
}

# cifar_single_node for one model, named after it (or the job name).
#   cifar_model_job MODEL [train.py flags...]
cifar_model_job() {
    CIFAR_FIRST_ARGS=(--model "$1")
    cifar_single_node "$(cifar_job_label "$1")" "${@:2}"
}

# One machine of a multi-node run, a task of the `srun` step (below slurm/step.py): rank from
# SLURM_NODEID (one task per node), or from SLURM_PROCID with CIFAR_TASKS_AS_MACHINES=1 (several
# tasks on one node each act as a machine: tests). The batch shell exports CIFAR_GPUS,
# CIFAR_PER_MACHINE, CIFAR_MACHINES, CIFAR_MAIN_IP, CIFAR_PORT and CIFAR_RUN_DIR.
#   cifar_node [train.py flags...]
cifar_node() {
    local rank=${SLURM_NODEID:-0}
    if [[ ${CIFAR_TASKS_AS_MACHINES:-0} == 1 ]]; then rank=${SLURM_PROCID:-0}; fi
    cifar_build_launch "$CIFAR_GPUS" "$CIFAR_PER_MACHINE" "$CIFAR_MACHINES" "$rank" \
        "$CIFAR_MAIN_IP" "$CIFAR_PORT"
    echo "machine $rank of $CIFAR_MACHINES on $(hostname): ${CIFAR_LAUNCH[*]} train.py $*"
    cifar_dry "${CIFAR_LAUNCH[@]}" train.py "$@" || exec "${CIFAR_LAUNCH[@]}" train.py "$@"
}
