#!/usr/bin/env bash
# Stops the development cluster started by launch/slurm_up.sh. State stays in $SPT_SLURM_DIR
# (pass --purge to delete it); munged is left running, other programs may use it.
set -uo pipefail

STATE=${SPT_SLURM_DIR:-/tmp/spt-slurm}
TIMEOUT=${SPT_SLURM_TIMEOUT:-30}

# stop PIDFILE NAME: TERM the daemon named in PIDFILE, KILL it after $TIMEOUT seconds.
stop() {
    local pidfile=$1 name=$2 pid
    [ -f "$pidfile" ] || return 0
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        for _ in $(seq $((TIMEOUT * 5))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        if kill -0 "$pid" 2>/dev/null; then
            echo "slurm_down: $name did not stop in ${TIMEOUT}s, killing it" >&2
            kill -KILL "$pid"
        fi
    fi
    rm -f "$pidfile"
}

stop "$STATE/run/slurmd.pid" slurmd
stop "$STATE/run/slurmctld.pid" slurmctld
stop "$STATE/run/slurmdbd.pid" slurmdbd
stop /run/mysqld/spt-slurm.pid mariadbd
if [ "${1:-}" = "--purge" ]; then
    rm -rf "$STATE"
fi
echo "slurm_down: stopped"
