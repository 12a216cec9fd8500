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

# Is a live (not zombie) process with this exact name running? (ps: pgrep counts zombies too)
# shellcheck disable=SC2009
running() { ps -C "$1" -o stat= | grep -qv '^Z'; }
# Node state as sinfo prints it (idle, alloc, down, drain, ...) without flag suffixes, except
# '*' (node not responding), so that "idle*" does not count as up.
node_state() { { sinfo -h -N -n "$HOST" -o %t 2>/dev/null || true; } | head -n1 | tr -d '~#!%$@^-'; }

# The wanted slurm.conf.
CPUS=$(nproc)
MEM_MB=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
REAL_MB=$((MEM_MB * 95 / 100))
new_conf=$(cat <<EOF
# Written by .ci/slurm-cluster.sh: one-node cluster for tests.
ClusterName=ci
SlurmctldHost=$HOST
AuthType=auth/munge
CredType=cred/munge
# A requeued batch job may start again only cred_expire + 1 s after its old run has ended
# (default 120 s, so over 2 min between runs); 5 is the smallest value accepted (below it,
# slurmctld logs "AuthInfo=cred_expire=N invalid" and uses 120).
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
# Once that delay is over nothing wakes the scheduler: the main loop (every sched_interval,
# default 60 s) picks the job up. With 2 s a requeued job runs again 6-8 s after its old run
# ended (the old run ends at once, or up to KillWait=30 s later if it traps SIGTERM).
SchedulerParameters=sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
# No accounting DB (sacct does not work): keep finished jobs in 'scontrol show job' for 10 min.
MinJobAge=600
JobRequeue=1
MailProg=/bin/true
# Without a default, CR_Core_Memory gives every job all the node's memory, so jobs run one at
# a time. (Memory is not enforced: no task/cgroup, no jobacct_gather.)
DefMemPerCPU=$((REAL_MB / CPUS))
NodeName=$HOST CPUs=$CPUS RealMemory=$REAL_MB State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
)
# Fast path: config unchanged, daemons running, node usable.
if [[ -f $CONF && $(cat "$CONF") == "$new_conf" ]] \
    && running slurmctld && running slurmd && running munged
then
    state=$(node_state)
    if [[ $state == idle || $state == mix || $state == alloc || $state == comp ]]; then
        log "cluster already up (node $HOST $state)"
        exit 0
    fi
fi

# --- 1. packages -------------------------------------------------------------------------
have_binaries() { command -v slurmctld && command -v slurmd && command -v munged; } >/dev/null
apt_busy() {
    pgrep -x apt-get || pgrep -x apt || pgrep -x dpkg || pgrep -x unattended-upgr
} >/dev/null
if ! have_binaries; then
    # Another apt may be installing them right now (make system-deps): let it finish (at most
    # 10 min) rather than fight over the dpkg lock.
    for _ in $(seq 600); do
        apt_busy || break
        sleep 1
    done
    if ! have_binaries; then
        log "installing slurm-wlm and munge"
        apt-get -o DPkg::Lock::Timeout=600 update
        DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y \
            slurm-wlm munge
    fi
fi
have_binaries || die "slurmctld/slurmd/munged still missing after install"

# slurmd and the clients must resolve SlurmctldHost.
getent hosts "$HOST" >/dev/null || echo "127.0.1.1 $HOST" >>/etc/hosts

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
if ! running munged; then
    log "starting munged"
    runuser -u munge -- munged --force
fi
for _ in $(seq 50); do munge -n </dev/null >/dev/null 2>&1 && break; sleep 0.1; done
munge -n </dev/null | unmunge >/dev/null || die "munge does not work"

# --- 3. slurm.conf (written from the text built above) ---------------------------------
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
        if running "$d"; then
            log "stopping $d (config changed)"
            for pid in $(pgrep -x "$d"); do kill "$pid" 2>/dev/null || true; done
            for _ in $(seq 100); do running "$d" || break; sleep 0.1; done
        fi
    done
fi
dump_logs() {
    local f
    for f in /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log; do
        log "last lines of $f:"; tail -n 20 "$f" >&2 || true
    done
}
if ! running slurmctld; then
    log "starting slurmctld"
    slurmctld || { dump_logs; die "slurmctld failed to start"; }
fi
for _ in $(seq 100); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.2; done
if ! running slurmd; then
    log "starting slurmd"
    slurmd || { dump_logs; die "slurmd failed to start"; }
fi

state=
for i in $(seq 60); do
    state=$(node_state)
    case $state in
        idle | mix | alloc | comp) log "node $HOST is $state"; exit 0 ;;
        down* | drain* | drng* | fail*)
            if ((i % 5 == 1)); then
                log "node $HOST is $state: resuming"
                scontrol update nodename="$HOST" state=resume || true
            fi
            ;;
    esac
    sleep 0.5
done
dump_logs
die "node $HOST never became idle (last state: '${state:-none}')"
