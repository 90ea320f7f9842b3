#!/usr/bin/env bash
# A single-node SLURM cluster for development and the launcher's tests.
#
# Starts, without systemd: munged (as user munge), mariadbd (as user mysql, own datadir),
# slurmdbd (so sacct and submitit can read job states), slurmctld and slurmd. All state,
# configs and logs live under $SPT_SLURM_DIR (default /tmp/spt-slurm). Running it again
# while the cluster is up does nothing. Then:   source "$SPT_SLURM_DIR/env.sh"
#
# Settings (environment):
#   SPT_SLURM_DIR     state folder                      (/tmp/spt-slurm)
#   SPT_SLURM_CPUS    CPUs the node advertises          (max(nproc, 8): jobs shaped for a
#                     real node still start on a small machine; they share its cores)
#   SPT_SLURM_PORT    first of four ports (ctld, d, dbd, mariadb)   (6817)
#   SPT_SLURM_TIMEOUT seconds to wait for each daemon   (60)
set -euo pipefail

STATE=${SPT_SLURM_DIR:-/tmp/spt-slurm}
PORT=${SPT_SLURM_PORT:-6817}
TIMEOUT=${SPT_SLURM_TIMEOUT:-60}
NCPU=$(nproc)
CPUS=${SPT_SLURM_CPUS:-$(( NCPU > 8 ? NCPU : 8 ))}
HOST=$(hostname -s)
CONF="$STATE/etc/slurm.conf"
LOG="$STATE/log"
DB_PORT=$((PORT + 3))

die() {
    echo "slurm_up: error: $*" >&2
    for f in "$LOG"/*.log; do
        [ -s "$f" ] || continue
        echo "----- $f (last 30 lines) -----" >&2
        tail -n 30 "$f" >&2
    done
    exit 1
}

# wait_for SECONDS DESCRIPTION COMMAND...: poll until COMMAND succeeds.
wait_for() {
    local limit=$1 what=$2; shift 2
    local deadline=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $deadline ] || die "$what not ready after ${limit}s"
        sleep 0.3
    done
}

running() { pgrep -x "$1" >/dev/null 2>&1; }

[ "$(id -u)" = 0 ] || die "needs root (daemons run as root, munge and mysql users)"

# --- packages: a fresh machine gets them from the distribution ---
need=()
for pair in slurmctld:slurmctld slurmd:slurmd srun:slurm-client munged:munge \
            slurmdbd:slurmdbd mariadbd:mariadb-server; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || [ -x "/usr/sbin/${pair%%:*}" ] || need+=("${pair#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
    echo "slurm_up: installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null \
        || die "apt-get install ${need[*]} failed"
fi
export PATH="/usr/sbin:$PATH"

export SLURM_CONF="$CONF"
if running slurmctld && running slurmd && [ -f "$STATE/env.sh" ] \
        && timeout 20 srun -N1 -t 1 true >/dev/null 2>&1; then
    echo "slurm_up: already up (source $STATE/env.sh)"
    exit 0
fi

mkdir -p "$STATE/etc" "$LOG" "$STATE/ctld" "$STATE/spool" "$STATE/run"
chmod 755 "$STATE"

# --- munge: one key per machine, the daemon as its own user ---
if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    mungekey --create --keyfile=/etc/munge/munge.key 2>/dev/null \
        || dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
fi
chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
if ! running munged; then
    runuser -u munge -- munged --force || die "munged did not start"
fi
wait_for "$TIMEOUT" munge sh -c 'munge -n | unmunge'

# --- mariadb: a private datadir, reached over TCP on 127.0.0.1 only. Grant tables are
# skipped: the server listens on loopback of a development machine, never beyond. ---
DB="$STATE/mysql"
if [ ! -d "$DB/mysql" ]; then
    mkdir -p "$DB" && chown mysql:mysql "$DB"
    mariadb-install-db --no-defaults --user=mysql --datadir="$DB" --skip-test-db \
        >"$LOG/mariadb-install.log" 2>&1 || die "mariadb-install-db failed (see $LOG/mariadb-install.log)"
fi
mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
if ! [ -f /run/mysqld/spt-slurm.pid ] || ! kill -0 "$(cat /run/mysqld/spt-slurm.pid)" 2>/dev/null; then
    touch "$LOG/mariadb.log" && chown mysql:mysql "$LOG/mariadb.log"
    runuser -u mysql -- mariadbd --no-defaults --datadir="$DB" --port="$DB_PORT" \
        --bind-address=127.0.0.1 --socket=/run/mysqld/spt-slurm.sock \
        --pid-file=/run/mysqld/spt-slurm.pid --skip-grant-tables --log-error="$LOG/mariadb.log" \
        >/dev/null 2>&1 &
fi
wait_for "$TIMEOUT" mariadb mariadb-admin --no-defaults --socket=/run/mysqld/spt-slurm.sock ping

# --- configs ---
MEM_MB=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
cat >"$CONF" <<EOF
# Written by launch/slurm_up.sh: a single-node development cluster.
ClusterName=spt
SlurmctldHost=$HOST
SlurmUser=root
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
AuthType=auth/munge
# Short credential life and kill wait: a requeued job may restart after ~10 s, not 120 s.
AuthInfo=cred_expire=10
KillWait=5
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
# No cgroups and no systemd here: plain process tracking.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
MpiDefault=none
ReturnToService=2
SchedulerParameters=sched_interval=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$((PORT + 2))
MinJobAge=300
NodeName=$HOST CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
cat >"$STATE/etc/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdPort=$((PORT + 2))
SlurmUser=root
LogFile=$LOG/slurmdbd.log
PidFile=$STATE/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=root
StorageLoc=spt_slurm_acct
EOF
chmod 600 "$STATE/etc/slurmdbd.conf"

# --- slurm daemons (slurmdbd finds slurmdbd.conf next to $SLURM_CONF) ---
running slurmdbd || slurmdbd || die "slurmdbd did not start"
wait_for "$TIMEOUT" slurmdbd sacctmgr -i list cluster
sacctmgr -i list cluster -n format=cluster | grep -qw spt || sacctmgr -i add cluster spt >/dev/null \
    || die "cannot register cluster 'spt' in slurmdbd"
running slurmctld || slurmctld -f "$CONF" || die "slurmctld did not start"
wait_for "$TIMEOUT" slurmctld scontrol ping
running slurmd || slurmd -f "$CONF" || die "slurmd did not start"
wait_for "$TIMEOUT" "node $HOST" sh -c "sinfo -h -N -o %t | grep -qE '^(idle|mix|alloc)'"

cat >"$STATE/env.sh" <<EOF
# source me: points the SLURM clients at the development cluster
export SLURM_CONF=$CONF
EOF
wait_for "$TIMEOUT" "srun -N1 true" timeout 20 srun -N1 -t 1 true
echo "slurm_up: cluster 'spt' up on $HOST ($CPUS CPUs); source $STATE/env.sh"
