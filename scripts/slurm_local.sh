#!/usr/bin/env bash
# A single-node SLURM on this machine (localhost), for the SLURM test and CI.
#
#   scripts/slurm_local.sh install   apt-get install slurmd slurmctld slurm-client munge if missing (root)
#   scripts/slurm_local.sh start     install if missing, write the config, start munged/slurmctld/slurmd,
#                                    wait until the node is idle (idempotent: a running SLURM is left alone);
#                                    its last stdout line is `started: <the daemons this call started>`
#   scripts/slurm_local.sh stop [DAEMON...]   stop the daemons this script started (all, or only the named
#                                    ones among munged/slurmctld/slurmd; idempotent)
#   scripts/slurm_local.sh status    sinfo + the daemons this script started
#
# The config is /etc/slurm/slurm.conf (where Debian's sbatch/squeue look for it, so that the literal
# `snakemake --profile slurm` works afterwards). An existing slurm.conf that this script did not write is
# never overwritten: then `start` fails with a message unless SLURM_LOCAL_FORCE=1.
# Facts: Debian 12 slurm-wlm 22.05 + munge 0.5; accounting off, so job status comes from squeue, which keeps
# finished jobs for MinJobAge=600 s (the profile sets slurm-status-command: squeue).
set -euo pipefail

CONF_DIR=${SLURM_LOCAL_CONF_DIR:-/etc/slurm}
CONF=$CONF_DIR/slurm.conf
STATE_DIR=${SLURM_LOCAL_STATE_DIR:-/run/slurm_local}   # pid files of the daemons *we* started
LOG_DIR=/var/log/slurm
MARKER="# written by scripts/slurm_local.sh"
PKGS=(slurmd slurmctld slurm-client munge)
WAIT_S=${SLURM_LOCAL_WAIT_S:-60}

log() { echo "slurm_local: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

have_binaries() {
    command -v slurmd >/dev/null && command -v slurmctld >/dev/null && command -v sbatch >/dev/null \
        && command -v munged >/dev/null
}
# Debian puts the daemons in /usr/sbin, which a non-login PATH may lack.
export PATH=$PATH:/usr/sbin:/sbin

as_root() {
    if [[ $(id -u) -eq 0 ]]; then "$@"
    elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo -n "$@"
    else return 1
    fi
}

cmd_install() {
    if have_binaries; then
        log "slurmd, slurmctld, sbatch and munged present"
        return 0
    fi
    command -v apt-get >/dev/null || die "slurm binaries missing and no apt-get here; install ${PKGS[*]}"
    log "installing ${PKGS[*]} with apt-get"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${PKGS[@]}" >&2 \
        || { as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2 \
             && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${PKGS[@]}" >&2; } \
        || die "apt-get install ${PKGS[*]} failed (root or sudo -n needed)"
    have_binaries || die "installed ${PKGS[*]} but the binaries are still missing"
}

controller_up() { timeout 10 scontrol ping 2>/dev/null | grep -q 'is UP'; }
node_state() { timeout 10 sinfo -h -N -o '%T' 2>/dev/null | head -1; }
pid_alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

write_conf() {
    local host node_line cpus mem
    host=$(hostname -s)
    # `slurmd -C` prints this machine's real NodeName/CPUs/.../RealMemory line.
    node_line=$(slurmd -C | grep '^NodeName=' | head -1)
    cpus=$(sed -n 's/.*[[:space:]]CPUs=\([0-9]*\).*/\1/p' <<<"$node_line")
    mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$node_line")
    [[ -n $cpus ]] || cpus=$(nproc)
    [[ -n $mem ]] || mem=$(free -m | awk '/^Mem:/{print $2}')
    mem=$((mem * 95 / 100))   # a little below the total, or slurmd marks the node invalid
    if [[ -f $CONF ]] && ! grep -qF "$MARKER" "$CONF" && [[ ${SLURM_LOCAL_FORCE:-0} != 1 ]]; then
        die "$CONF exists and was not written by this script; refusing to overwrite (SLURM_LOCAL_FORCE=1 to do it)"
    fi
    mkdir -p "$CONF_DIR" "$LOG_DIR" /var/spool/slurmctld /var/spool/slurmd
    cat >"$CONF.tmp" <<EOF
$MARKER ($(date -u +%FT%TZ)); single node on localhost
# (addresses given as 127.0.0.1, so the host name need not resolve).
ClusterName=local
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmUser=root
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
MinJobAge=600
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
    mv "$CONF.tmp" "$CONF"
    log "wrote $CONF (NodeName=$host CPUs=$cpus RealMemory=$mem)"
}

start_munge() {
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        log "munged already running"
        return 0
    fi
    if [[ ! -s /etc/munge/munge.key ]]; then
        log "creating /etc/munge/munge.key"
        mkdir -p /etc/munge
        if command -v mungekey >/dev/null; then mungekey --create --keyfile=/etc/munge/munge.key --force
        else dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
        fi
    fi
    local user=root
    id munge >/dev/null 2>&1 && user=munge
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown "$user" /etc/munge/munge.key /run/munge /var/log/munge /var/lib/munge /etc/munge
    chmod 0400 /etc/munge/munge.key
    chmod 0700 /etc/munge /var/log/munge /var/lib/munge
    chmod 0755 /run/munge
    if [[ $user == munge ]]; then
        runuser -u munge -- munged --pid-file=/run/munge/munged.pid
    else
        munged --force --pid-file=/run/munge/munged.pid
    fi
    for _ in $(seq 20); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break
        sleep 0.5
    done
    munge -n | unmunge >/dev/null || die "munged does not answer"
    cp /run/munge/munged.pid "$STATE_DIR/munged.pid"
    STARTED+=(munged)
    log "started munged (pid $(cat "$STATE_DIR/munged.pid"))"
}

STARTED=()
cmd_start() {
    cmd_install
    mkdir -p "$STATE_DIR"
    if controller_up; then
        log "a SLURM controller is already up; leaving it alone"
    else
        [[ $(id -u) -eq 0 ]] || die "starting the daemons needs root"
        write_conf
        start_munge
        # -i: ignore state left by an earlier run (jobs, node states) of this throwaway cluster
        slurmctld -i
        for _ in $(seq "$WAIT_S"); do controller_up && break; sleep 1; done
        controller_up || die "slurmctld did not come up; see $LOG_DIR/slurmctld.log"
        cp /run/slurmctld.pid "$STATE_DIR/slurmctld.pid"
        STARTED+=(slurmctld)
        log "started slurmctld (pid $(cat "$STATE_DIR/slurmctld.pid"))"
    fi
    if ! pgrep -x slurmd >/dev/null; then
        slurmd
        for _ in $(seq 20); do [[ -s /run/slurmd.pid ]] && break; sleep 0.5; done
        cp /run/slurmd.pid "$STATE_DIR/slurmd.pid"
        STARTED+=(slurmd)
        log "started slurmd (pid $(cat "$STATE_DIR/slurmd.pid"))"
    fi
    local state=""
    for _ in $(seq "$WAIT_S"); do
        state=$(node_state)
        case $state in idle*|mixed*|allocated*) break ;; esac
        sleep 1
    done
    case $state in
        idle*|mixed*|allocated*) ;;
        *) # a node left DOWN/DRAIN by an earlier run: bring it back once
           scontrol update NodeName="$(hostname -s)" State=RESUME 2>/dev/null || true
           sleep 2; state=$(node_state) ;;
    esac
    case $state in
        idle*|mixed*|allocated*) log "SLURM is up: node $(hostname -s) is $state" ;;
        *) die "node state is '$state'; see $LOG_DIR/slurmd.log and $LOG_DIR/slurmctld.log" ;;
    esac
    echo "started: ${STARTED[*]}"
}

stop_one() {  # name: stop the daemon whose pid file we saved at start, wait until it is gone
    local pidf=$STATE_DIR/$1.pid pid
    [[ -f $pidf ]] || return 0
    pid=$(cat "$pidf")
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
        log "stopped $1 (pid $pid)"
    fi
    rm -f "$pidf"
}

cmd_stop() {
    local d names=("$@")
    [[ ${#names[@]} -gt 0 ]] || names=(slurmd slurmctld munged)
    for d in "${names[@]}"; do
        case $d in slurmd|slurmctld|munged) ;; *) die "stop: unknown daemon '$d' (munged, slurmctld, slurmd)" ;; esac
    done
    for d in slurmd slurmctld munged; do   # this order: the node, the controller, then authentication
        [[ " ${names[*]} " == *" $d "* ]] && stop_one "$d"
    done
    return 0
}

cmd_status() {
    timeout 10 sinfo 2>&1 || true
    local f
    for f in "$STATE_DIR"/*.pid; do
        [[ -e $f ]] || continue
        if pid_alive "$f"; then echo "$(basename "$f" .pid): pid $(cat "$f") (started by slurm_local.sh)"; fi
    done
}

case ${1:-} in
    install) cmd_install ;;
    start) cmd_start ;;
    stop) shift; cmd_stop "$@" ;;
    status) cmd_status ;;
    *) echo "usage: $0 install|start|stop|status" >&2; exit 64 ;;
esac
