#!/usr/bin/env bash
# Make this machine a one-node SLURM cluster (slurmctld + slurmd on $(hostname), partition
# "debug"). Run as root. Idempotent: if the daemons already run and the node is idle it
# returns at once. Tested on Debian bookworm (slurm-wlm 22.05.8, munge 0.5.15).
set -euo pipefail

log() { echo "slurm-cluster: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[[ $(id -u) -eq 0 ]] || die "must run as root"

HOST=$(hostname)
CONF=/etc/slurm/slurm.conf

node_state() { sinfo -h -N -n "$HOST" -o %t 2>/dev/null | head -n1 | tr -d '*~#!%$@^-'; }

# Fast path: everything is up already.
if pgrep -x slurmctld >/dev/null && pgrep -x slurmd >/dev/null && pgrep -x munged >/dev/null \
    && [[ $(node_state) == idle || $(node_state) == mix || $(node_state) == alloc ]]; then
    log "cluster already up (node $HOST $(node_state))"
    exit 0
fi

# --- 1. packages -------------------------------------------------------------------------
dpkg_busy() {
    pgrep -x apt-get >/dev/null || pgrep -x apt >/dev/null || pgrep -x dpkg >/dev/null \
        || { command -v fuser >/dev/null && fuser /var/lib/dpkg/lock-frontend >/dev/null 2>&1; }
}
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    # Another shell may be installing them right now (it logs to /work/apt.log, ending 'done').
    for _ in $(seq 600); do
        if command -v slurmctld >/dev/null && command -v munged >/dev/null && ! dpkg_busy; then
            break
        fi
        if [[ -f /work/apt.log ]] && grep -qx done /work/apt.log && ! dpkg_busy; then break; fi
        dpkg_busy || break
        sleep 1
    done
    if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
        log "installing slurm-wlm and munge"
        apt-get -o DPkg::Lock::Timeout=600 update
        DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y \
            slurm-wlm munge
    fi
fi
command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
    || die "slurmctld/slurmd/munged still missing after install"

# --- 2. munge ----------------------------------------------------------------------------
if [[ ! -s /etc/munge/munge.key ]]; then
    log "creating /etc/munge/munge.key"
    install -d -o munge -g munge -m 700 /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
fi
install -d -o munge -g munge -m 755 /run/munge
install -d -o munge -g munge -m 700 /var/log/munge /var/lib/munge
if ! pgrep -x munged >/dev/null; then
    log "starting munged"
    runuser -u munge -- munged --force
fi
for _ in $(seq 50); do munge -n </dev/null >/dev/null 2>&1 && break; sleep 0.1; done
munge -n </dev/null | unmunge >/dev/null || die "munge does not work"

# --- 3. slurm.conf -----------------------------------------------------------------------
CPUS=$(nproc)
MEM_MB=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
REAL_MB=$((MEM_MB * 95 / 100))
new_conf=$(cat <<EOF
# Written by .ci/slurm-cluster.sh: one-node cluster for tests.
ClusterName=ci
SlurmctldHost=$HOST
AuthType=auth/munge
CredType=cred/munge
# A requeued batch job gets BeginTime = requeue time + cred_expire + 1 s (default 120 s);
# 5 s is the smallest value slurmctld accepts.
AuthInfo=cred_expire=5
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SlurmUser=root
SlurmdUser=root
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
# No accounting DB (sacct does not work): keep finished jobs in 'scontrol show job' for 10 min.
MinJobAge=600
JobRequeue=1
NodeName=$HOST CPUs=$CPUS RealMemory=$REAL_MB State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
)
conf_changed=0
if [[ ! -f $CONF ]] || [[ $(cat "$CONF") != "$new_conf" ]]; then
    log "writing $CONF"
    install -d -m 755 /etc/slurm
    printf '%s\n' "$new_conf" >"$CONF"
    conf_changed=1
fi
install -d -m 755 /var/spool/slurmctld /var/spool/slurmd /var/log/slurm

# --- 4. daemons --------------------------------------------------------------------------
if [[ $conf_changed -eq 1 ]]; then
    # Running daemons would keep the old config: restart them.
    for d in slurmd slurmctld; do
        if pid=$(pgrep -x "$d"); then
            log "stopping $d (config changed)"
            kill $pid
            for _ in $(seq 50); do kill -0 $pid 2>/dev/null || break; sleep 0.1; done
        fi
    done
fi
if ! pgrep -x slurmctld >/dev/null; then
    log "starting slurmctld"
    slurmctld
fi
for _ in $(seq 100); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.2; done
if ! pgrep -x slurmd >/dev/null; then
    log "starting slurmd"
    slurmd
fi

state=
for i in $(seq 60); do
    state=$(node_state)
    case $state in
        idle | mix | alloc) log "node $HOST is $state"; exit 0 ;;
        down | drain | drng | fail | failg)
            if ((i % 5 == 1)); then
                log "node $HOST is $state: resuming"
                scontrol update nodename="$HOST" state=resume || true
            fi
            ;;
    esac
    sleep 0.5
done
log "slurmctld log tail:"; tail -n 20 /var/log/slurm/slurmctld.log >&2 || true
log "slurmd log tail:"; tail -n 20 /var/log/slurm/slurmd.log >&2 || true
die "node $HOST never became idle (last state: '${state:-none}')"
