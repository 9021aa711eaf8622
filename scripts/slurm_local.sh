#!/usr/bin/env bash
# A one-node SLURM cluster on this machine (Debian 12, as root, no systemd needed): test infrastructure
# for the pipeline's SLURM tests (CI runs `start` first) and a way to try SLURM on a laptop.
#
# Usage: bash scripts/slurm_local.sh start|stop|status
#   start   installs what is missing (slurm-wlm 22.05, slurmdbd, mariadb-server, munge; apt-get), then
#           starts munged, MariaDB (its own instance: 127.0.0.1:$SLURM_LOCAL_DB_PORT, default 3307),
#           slurmdbd, slurmctld and slurmd directly, and waits until the node is idle and sacct answers.
#           Running daemons are left alone; a changed config restarts the SLURM daemons.
#   stop    stops them (slurmd, slurmctld, slurmdbd, MariaDB, munged: the last two only when this
#           script started them); config and state stay, so a later start takes seconds.
#   status  each daemon and its log, then sinfo; exit 0 only when all of them run.
#
# The cluster: ClusterName=local, one node (this host: `slurmd -C`'s CPUs, 95% of its memory), one
# partition `local` (the default, no time limit); cons_tres by core and memory (jobs share the node),
# time limits enforced within a minute (OverTimeLimit=0, KillWait=30), jobs requeueable, accounting
# in MariaDB through slurmdbd (sacct works). No cgroups: proctrack/linuxproc, task/none.
# Config: /etc/slurm/slurm.conf and slurmdbd.conf (their first line marks them as this script's; it
# refuses to overwrite others). State, logs, the database: $SLURM_LOCAL_DIR (default /var/lib/slurm-local).
set -euo pipefail

MARK="# Written by scripts/slurm_local.sh"
CONF=/etc/slurm/slurm.conf
DBDCONF=/etc/slurm/slurmdbd.conf
DB_PORT="${SLURM_LOCAL_DB_PORT:-3307}"
TIMEOUT="${SLURM_LOCAL_TIMEOUT:-90}"   # seconds each daemon gets to answer
CLUSTER=local
PACKAGES=(slurm-wlm slurmctld slurmd slurm-client slurmdbd mariadb-server munge procps)

die() { echo "slurm-local: error: $*" >&2; exit 1; }
say() { echo "slurm-local: $*"; }

ours() { [ ! -e "$1" ] || [[ "$(head -n 1 "$1")" == "$MARK"* ]]; }
# the state folder: the environment's, else the one the existing config names, else the default
recorded_dir() { [ -f "$CONF" ] && ours "$CONF" && sed -n 's/^# SLURM_LOCAL_DIR=//p' "$CONF" | head -n 1; }
DIR="${SLURM_LOCAL_DIR:-$(recorded_dir || true)}"
DIR="${DIR:-/var/lib/slurm-local}"

MUNGE_LOG="$DIR/munge/munged.log";   MUNGE_PID="$DIR/munge/munged.pid"
DB_CNF="$DIR/mariadb.cnf";           DB_LOG="$DIR/mariadb/mariadb.log";  DB_PID="$DIR/mariadb/mariadbd.pid"
DBD_LOG="$DIR/slurm/slurmdbd.log";   DBD_PID="$DIR/slurm/slurmdbd.pid"
CTLD_LOG="$DIR/slurm/slurmctld.log"; CTLD_PID="$DIR/slurm/slurmctld.pid"
SLURMD_LOG="$DIR/slurmd/slurmd.log"; SLURMD_PID="$DIR/slurmd/slurmd.pid"
NODE="$(uname -n)"; NODE="${NODE%%.*}"

# pid of a daemon: from its pid file when that process is alive and has the right name, else (SLURM's
# daemons only, one per machine) by exact name
pid_of() {  # NAME PIDFILE [byname]
  local pid
  pid="$(cat "$2" 2>/dev/null || true)"
  if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$1" ]; then echo "$pid"; return 0; fi
  [ "${3:-}" = byname ] && pgrep -o -x "$1"
}
munge_ok() { munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; }
db() { mariadb --defaults-file="$DB_CNF" "$@"; }

# wait until CMD... succeeds; else fail naming the daemon's log (and its last lines)
wait_for() {  # WHAT LOG CMD...
  local what="$1" log="$2" end=$((SECONDS + TIMEOUT))
  shift 2
  until "$@" >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$end" ]; then
      echo "slurm-local: error: $what did not come up within $TIMEOUT s; its log: $log" >&2
      tail -n 15 "$log" 2>/dev/null | sed 's/^/  | /' >&2
      exit 1
    fi
    sleep 1
  done
}

install_packages() {
  local missing=() p log
  for p in "${PACKAGES[@]}"; do
    # dpkg-query's own ${Status}, not the shell's
    # shellcheck disable=SC2016
    dpkg-query -W -f '${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ "${#missing[@]}" -eq 0 ] && return 0
  command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get: this script wants Debian 12"
  log="$DIR/apt.log"
  say "installing ${missing[*]} (apt-get; log: $log)"
  # keep the packages' own service scripts from starting daemons: this script starts them itself
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  local apt=(apt-get install -y -q --no-install-recommends "${missing[@]}")
  if ! DEBIAN_FRONTEND=noninteractive "${apt[@]}" >"$log" 2>&1; then
    # stale or missing package lists: update them once and try again
    grep -Eq "Unable to locate package|has no installation candidate|Failed to fetch|404" "$log" \
      || die "apt-get install failed; see $log"
    apt-get update -q >>"$log" 2>&1 || die "apt-get update failed; see $log"
    DEBIAN_FRONTEND=noninteractive "${apt[@]}" >>"$log" 2>&1 || die "apt-get install failed; see $log"
  fi
  if [ -n "$(trap -p EXIT)" ]; then rm -f /usr/sbin/policy-rc.d; trap - EXIT; fi
}

folders() {
  id slurm >/dev/null 2>&1 || useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin slurm
  install -d -m 755 "$DIR" /etc/slurm
  install -d -o munge -g munge -m 755 "$DIR/munge"
  install -d -o munge -g munge -m 755 /run/munge
  install -d -o mysql -g mysql -m 755 "$DIR/mariadb"
  install -d -o slurm -g slurm -m 755 "$DIR/slurm" "$DIR/slurm/state"
  install -d -m 755 "$DIR/slurmd" "$DIR/slurmd/spool"
}

start_munge() {
  # the key every daemon and client shares: create one if missing, Debian's ownership and modes
  install -d -o munge -g munge -m 700 /etc/munge
  if [ ! -s /etc/munge/munge.key ]; then
    mungekey --create --keyfile=/etc/munge/munge.key 2>/dev/null \
      || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  fi
  chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
  munge_ok && return 0  # ours or the machine's own munged: either will do
  runuser -u munge -- /usr/sbin/munged --pid-file="$MUNGE_PID" --log-file="$MUNGE_LOG" \
    --seed-file="$DIR/munge/munged.seed" >/dev/null 2>&1 || true
  wait_for munged "$MUNGE_LOG" munge_ok
}

start_mariadb() {
  # a changed config (an earlier version of this script): restart MariaDB with it
  if write_conf "$DB_CNF" root 644 <<EOF
# MariaDB instance of scripts/slurm_local.sh: slurmdbd's database, nothing else
[client]
socket=$DIR/mariadb/mysqld.sock
[mysqld]
user=mysql
datadir=$DIR/mariadb/data
socket=$DIR/mariadb/mysqld.sock
pid-file=$DB_PID
log-error=$DB_LOG
port=$DB_PORT
bind-address=127.0.0.1
skip-name-resolve
# 512M: slurmdbd's least recommended size (allocated as used)
innodb_buffer_pool_size=512M
innodb_log_file_size=64M
innodb_lock_wait_timeout=900
EOF
  then stop_daemon mariadbd "$DB_PID"; fi
  if [ -z "$(pid_of mariadbd "$DB_PID")" ]; then
    if [ ! -d "$DIR/mariadb/data/mysql" ]; then
      mariadb-install-db --defaults-file="$DB_CNF" --skip-test-db --auth-root-authentication-method=socket \
        >>"$DIR/mariadb/install-db.log" 2>&1 || die "mariadb-install-db failed; see $DIR/mariadb/install-db.log"
    fi
    setsid /usr/sbin/mariadbd --defaults-file="$DB_CNF" </dev/null >/dev/null 2>&1 &
  fi
  wait_for MariaDB "$DB_LOG" mariadb-admin --defaults-file="$DB_CNF" ping
}

# slurmdbd's database and user; the password lives in slurmdbd.conf (generated once)
db_user() {
  local pass
  pass="$(sed -n 's/^StoragePass=//p' "$DBDCONF" 2>/dev/null || true)"
  [ -n "$pass" ] || pass="$(tr -dc 'A-Za-z0-9' </dev/urandom | head -c 24 || true)"
  db <<SQL || die "could not create slurmdbd's database (MariaDB log: $DB_LOG)"
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$pass';
ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$pass';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
SQL
  echo "$pass"
}

# write FILE from stdin when its content changed; status 0 if it did
write_conf() {  # FILE OWNER MODE
  local tmp
  tmp="$(mktemp "$1.XXXXXX")"
  cat >"$tmp"
  if cmp -s "$tmp" "$1" && [ "$(stat -c '%U %a' "$1")" = "$2 $3" ]; then rm -f "$tmp"; return 1; fi
  chown "$2:$2" "$tmp" && chmod "$3" "$tmp" && mv -f "$tmp" "$1"
}

dbd_conf() {  # PASSWORD
  write_conf "$DBDCONF" slurm 600 <<EOF
$MARK: slurmdbd of the one-node cluster (\`slurm_local.sh start\` rewrites it).
AuthType=auth/munge
DbdHost=localhost
SlurmUser=slurm
DebugLevel=info
LogFile=$DBD_LOG
PidFile=$DBD_PID
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$1
StorageLoc=slurm_acct_db
EOF
}

slurm_conf() {
  local hw cpus mem
  # this node as slurmd sees it: CPUs, sockets, cores, threads, memory (MB)
  hw="$(slurmd -C 2>/dev/null | head -n 1)"
  [[ "$hw" == NodeName=* ]] || die "slurmd -C did not describe this node"
  cpus="$(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<<"$hw")"
  mem="$(sed -n 's/.* RealMemory=\([0-9]*\).*/\1/p' <<<"$hw")"
  mem=$((mem * 95 / 100))  # a little below the real memory: the node is not drained for it
  hw="$(sed -e "s/^NodeName=[^ ]*/NodeName=$NODE NodeAddr=127.0.0.1/" -e "s/RealMemory=[0-9]*/RealMemory=$mem/" <<<"$hw")"
  NODE_DESC="$cpus CPUs, $mem MB"
  write_conf "$CONF" root 644 <<EOF
$MARK: the one-node cluster (\`slurm_local.sh start\` rewrites it).
# SLURM_LOCAL_DIR=$DIR
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=slurm
AuthType=auth/munge
StateSaveLocation=$DIR/slurm/state
SlurmdSpoolDir=$DIR/slurmd/spool
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$CTLD_LOG
SlurmdLogFile=$SLURMD_LOG
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
MpiDefault=none
# no cgroups (containers): processes tracked by their parent ids, no binding
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
PropagateResourceLimits=NONE
# jobs share the node by cores and memory; a job without --mem gets one CPU's share
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$((mem / cpus))
# time limits: killed at --time (checked every 30 s), SIGKILL 30 s after SIGTERM
OverTimeLimit=0
KillWait=30
# a finished job stays in squeue 300 s (SLURM's default): longer than the executor plugin's longest
# wait between status checks (180 s), so its squeue status queries see every job end
MinJobAge=300
JobRequeue=1
# a requeued job may start again after cred_expire seconds (default 120)
AuthInfo=cred_expire=30
ReturnToService=2
JobAcctGatherType=jobacct_gather/linux
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
$hw State=UNKNOWN
PartitionName=$CLUSTER Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
}

# SIGTERM, then SIGKILL after 60 s
stop_daemon() {  # NAME PIDFILE [byname]
  local pid end=$((SECONDS + 60))
  pid="$(pid_of "$@" || true)"
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null; do
    if [ "$SECONDS" -ge "$end" ]; then kill -KILL "$pid" 2>/dev/null || true; break; fi
    sleep 0.2
  done
}

node_state() { sinfo -h -n "$NODE" -o %T 2>/dev/null; }
node_up() { node_state | grep -Eqx 'idle|mixed|allocated|completing'; }
sacct_ok() { sacctmgr -n list cluster >/dev/null && sacct -n -a -X -S now-1hours >/dev/null; }
added() { [ -n "$(sacctmgr -n -P list "$@" 2>/dev/null)" ]; }

cmd_start() {
  [ "$(id -u)" -eq 0 ] || die "run it as root (sudo bash $0 start)"
  ours "$CONF" || die "$CONF was not written by this script (no '$MARK' first line); not touching it"
  ours "$DBDCONF" || die "$DBDCONF was not written by this script; not touching it"
  local rec
  rec="$(recorded_dir || true)"
  if [ -n "$rec" ] && [ "$rec" != "$DIR" ] && pgrep -x slurmctld >/dev/null; then
    die "the cluster runs from $rec; stop it first (bash $0 stop)"
  fi
  install -d -m 755 "$DIR"
  install_packages
  folders
  start_munge
  start_mariadb

  # the configs; a new or changed one: the daemons read it afresh
  local pass user
  if slurm_conf; then
    stop_daemon slurmd "$SLURMD_PID" byname
    stop_daemon slurmctld "$CTLD_PID" byname
  fi
  pass="$(db_user)"
  if dbd_conf "$pass"; then stop_daemon slurmdbd "$DBD_PID" byname; fi

  [ -n "$(pid_of slurmdbd "$DBD_PID" byname)" ] || slurmdbd
  wait_for slurmdbd "$DBD_LOG" sacctmgr -n list cluster
  added cluster "$CLUSTER" format=cluster || sacctmgr -i -Q add cluster "$CLUSTER" >/dev/null
  added account "$CLUSTER" format=account \
    || sacctmgr -i -Q add account "$CLUSTER" Cluster="$CLUSTER" Description="one-node cluster" Organization=local >/dev/null
  local users=(root)
  [ -z "${SUDO_USER:-}" ] || [ "$SUDO_USER" = root ] || users+=("$SUDO_USER")  # sudo's caller too
  for user in "${users[@]}"; do
    added assoc cluster="$CLUSTER" account="$CLUSTER" user="$user" format=user \
      || sacctmgr -i -Q add user "$user" Account="$CLUSTER" Cluster="$CLUSTER" >/dev/null
  done

  [ -n "$(pid_of slurmctld "$CTLD_PID" byname)" ] || slurmctld
  wait_for slurmctld "$CTLD_LOG" scontrol ping
  [ -n "$(pid_of slurmd "$SLURMD_PID" byname)" ] || slurmd
  wait_for "slurmd (node $NODE)" "$SLURMD_LOG" node_state
  if node_state | grep -Eq '^(down|drain|fail)'; then  # left down or drained by an earlier run
    scontrol update NodeName="$NODE" State=RESUME 2>/dev/null || true
  fi
  wait_for "slurmd (node $NODE idle)" "$SLURMD_LOG" node_up
  wait_for "slurmdbd (sacct)" "$DBD_LOG" sacct_ok

  say "up in ${SECONDS} s: node $NODE ($NODE_DESC), partition $CLUSTER; config $CONF; state $DIR"
  logs
}

logs() {
  printf '  %-9s log %s\n' munged "$MUNGE_LOG" mariadbd "$DB_LOG" slurmdbd "$DBD_LOG" slurmctld "$CTLD_LOG" \
    slurmd "$SLURMD_LOG"
}

cmd_stop() {
  [ "$(id -u)" -eq 0 ] || die "run it as root (sudo bash $0 stop)"
  ours "$CONF" || die "$CONF was not written by this script; not stopping its daemons"
  stop_daemon slurmd "$SLURMD_PID" byname
  stop_daemon slurmctld "$CTLD_PID" byname
  stop_daemon slurmdbd "$DBD_PID" byname
  stop_daemon mariadbd "$DB_PID"   # ours only: not a MariaDB the machine runs itself
  stop_daemon munged "$MUNGE_PID"  # likewise
  say "stopped (config and state kept: $CONF, $DIR)"
}

cmd_status() {
  local ok=0 d name pid log byname
  for d in "munged $MUNGE_PID $MUNGE_LOG" "mariadbd $DB_PID $DB_LOG" "slurmdbd $DBD_PID $DBD_LOG byname" \
           "slurmctld $CTLD_PID $CTLD_LOG byname" "slurmd $SLURMD_PID $SLURMD_LOG byname"; do
    read -r name pid log byname <<<"$d"
    pid="$(pid_of "$name" "$pid" "$byname" || true)"
    if [ -n "$pid" ]; then
      printf '%-9s running (pid %s)  log %s\n' "$name" "$pid" "$log"
    elif [ "$name" = munged ] && munge_ok; then
      printf '%-9s running (pid file not readable, or not started by this script)\n' "$name"
    elif [ "$name" = mariadbd ] && mariadb-admin --defaults-file="$DB_CNF" ping >/dev/null 2>&1; then
      printf '%-9s running (pid file not readable)  log %s\n' "$name" "$log"
    else
      printf '%-9s NOT running  log %s\n' "$name" "$log"; ok=1
    fi
  done
  if [ -z "$(pid_of slurmctld "$CTLD_PID" byname)" ]; then
    echo "(no sinfo: slurmctld is not running; start it: sudo bash $0 start)"; ok=1
  elif ! timeout 20 sinfo; then
    ok=1
  fi
  return "$ok"
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *) echo "usage: bash $0 start|stop|status" >&2; exit 2 ;;
esac
