#!/usr/bin/env bash
# Stand up a one-node SLURM on this machine (Debian, as root) so that profiles/slurm can be tried and tested
# against a real scheduler: slurm-wlm + munge from Debian, a slurm.conf generated from `slurmd -C`
# (proctrack/linuxproc, task/none, select/cons_tres, no accounting database, no GPU GRES: a CPU-only cluster),
# then munged, slurmctld and slurmd, and a wait until the node is idle.
#
#   bash scripts/local_slurm.sh            # idempotent: a second run only checks the cluster answers
#
# Exits 0 with "skipped: ..." where it cannot do this (not root, no apt-get, a slurm.conf it did not write),
# so tests/test_slurm.py is skipped rather than CI failing; exits non-zero when it tried and failed.
set -euo pipefail

CONF=/etc/slurm/slurm.conf
MARKER="# written by lever-plus scripts/local_slurm.sh"
STATE=/var/lib/slurm-local
LOGS=/var/log/slurm-local
step() { echo "local_slurm: $*"; }
skip() {
  echo "local_slurm: skipped: $*"
  exit 0
}
fail() {
  echo "local_slurm: FAILED: $*" >&2
  exit 1
}

cluster_answers() { timeout 10 sinfo -h -N -o '%T' 2>/dev/null | grep -E '^(idle|mixed|allocated|completing)' >/dev/null; }

if [ "$(id -u)" != 0 ]; then
  if command -v sinfo >/dev/null 2>&1 && cluster_answers; then
    step "not root, but a SLURM cluster answers: using it"
    exit 0
  fi
  skip "not root (a local SLURM needs root to install and start daemons)"
fi

# 1. packages
if command -v sbatch >/dev/null 2>&1 && command -v slurmd >/dev/null 2>&1 && command -v munged >/dev/null 2>&1; then
  step "slurm-wlm and munge already installed ($(slurmd -V))"
else
  command -v apt-get >/dev/null 2>&1 || skip "sbatch is absent and apt-get is unavailable"
  step "installing slurm-wlm and munge with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || fail "apt-get update"
  apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null || fail "apt-get install slurm-wlm munge"
  step "installed $(slurmd -V)"
fi

# 2. slurm.conf from `slurmd -C` (a site's own slurm.conf is never touched)
if [ -f "$CONF" ] && ! grep -qF "$MARKER" "$CONF"; then
  if cluster_answers; then
    step "$CONF is the site's own and the cluster answers: using it"
    exit 0
  fi
  skip "$CONF exists, was not written by this script, and its cluster does not answer"
fi
node_line=$(slurmd -C | head -n 1)
node=$(sed -E 's/^NodeName=([^ ]+).*/\1/' <<<"$node_line")
[ -n "$node" ] || fail "could not read the node from 'slurmd -C': $node_line"
grep -qE "(^|[[:space:]])$node([[:space:]]|$)" /etc/hosts || getent hosts "$node" >/dev/null \
  || echo "127.0.0.1 $node" >>/etc/hosts
mkdir -p /etc/slurm "$STATE/ctld" "$STATE/d" "$LOGS"
new_conf=$(
  cat <<EOF
$MARKER
# One node, CPU only (no GRES), no accounting database: job status comes from squeue, so MinJobAge must
# stay >= 120 s (the plugin's threshold for trusting squeue).
ClusterName=lever
SlurmctldHost=$node
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
MinJobAge=300
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
$node_line State=UNKNOWN
PartitionName=main Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
)
conf_changed=0
if [ ! -f "$CONF" ] || [ "$(cat "$CONF")" != "$new_conf" ]; then
  printf '%s\n' "$new_conf" >"$CONF"
  conf_changed=1
  step "wrote $CONF ($node_line)"
else
  step "$CONF is up to date"
fi

# 3. munge
if [ ! -s /etc/munge/munge.key ]; then
  mkdir -p /etc/munge
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
  step "created a munge key"
fi
chown munge:munge /etc/munge /etc/munge/munge.key 2>/dev/null || true
chmod 0700 /etc/munge && chmod 0400 /etc/munge/munge.key
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  step "munged is running"
else
  runuser -u munge -- /usr/sbin/munged || /usr/sbin/munged --force || fail "munged did not start"
  for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
  munge -n | unmunge >/dev/null || fail "munge does not authenticate"
  step "started munged"
fi

# 4. the daemons (restarted only when this script changed the config)
running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
stop() {
  if running "$1"; then
    kill "$(cat "$1")"
    for _ in $(seq 50); do running "$1" || break; sleep 0.1; done
  fi
}
if [ "$conf_changed" = 1 ]; then
  stop /run/slurmd.pid
  stop /run/slurmctld.pid
fi
if running /run/slurmctld.pid; then
  step "slurmctld is running"
else
  /usr/sbin/slurmctld || fail "slurmctld did not start (see $LOGS/slurmctld.log)"
  step "started slurmctld"
fi
if running /run/slurmd.pid; then
  step "slurmd is running"
else
  /usr/sbin/slurmd || fail "slurmd did not start (see $LOGS/slurmd.log)"
  step "started slurmd"
fi

# 5. wait for the node
for _ in $(seq 60); do
  state=$(timeout 10 sinfo -h -n "$node" -o '%T' 2>/dev/null || true)
  case "$state" in
    idle | mixed | allocated | completing)
      step "node $node is $state; partition main is up"
      exit 0
      ;;
    down* | drain* | fail*) scontrol update NodeName="$node" State=RESUME >/dev/null 2>&1 || true ;;
  esac
  sleep 1
done
fail "node $node did not become idle (state '${state:-none}'; see $LOGS/)"
