#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, for the `slurm` tests (and for trying hydra/launcher=slurm by hand):
# Debian's slurmctld, slurmd and munge, a slurm.conf written for this host, both daemons started. Idempotent: a
# second call finds the node idle and does nothing. Needs root and Debian's package registry.
#   sudo scripts/start_slurm.sh            # then: sinfo; srun -N1 hostname
set -euo pipefail

STATE=${SLURM_STATE_DIR:-/var/lib/rpe_bench_slurm}
NODE=$(hostname -s)

node_state() { timeout 5 sinfo -h -o %T 2>/dev/null | head -1 || true; }

if command -v sinfo >/dev/null && [[ "$(node_state)" =~ ^(idle|mixed|allocated) ]]; then
  echo "slurm: node $NODE is $(node_state)"
  exit 0
fi

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
fi

if [[ ! -s /etc/munge/munge.key ]]; then
  head -c 1024 /dev/urandom > /etc/munge/munge.key
  chown munge:munge /etc/munge/munge.key
  chmod 0400 /etc/munge/munge.key
fi
install -d -o munge -g munge -m 0755 /run/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  runuser -u munge -- /usr/sbin/munged
  for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
fi

CPUS=$(nproc)
# What slurmd may hand out: the machine's memory less 2 GB for the system and the tests' own processes.
MEMORY_MB=$(( $(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo) - 2048 ))
mkdir -p "$STATE/ctld" "$STATE/d" /etc/slurm
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=rpe_bench
SlurmctldHost=$NODE
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# A requeued job may start again after 10 s instead of the default 120 s.
AuthInfo=cred_expire=10
MpiDefault=none
MailProg=/bin/true
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=5,bf_interval=5
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# No cgroups in this container: nothing pins a job to its CPUs, so the job itself must honour
# SLURM_CPUS_PER_TASK (rpe_bench does).
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobRequeue=1
ReturnToService=2
MinJobAge=600
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
NodeName=$NODE CPUs=$CPUS RealMemory=$MEMORY_MB State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
CONF

pgrep -x slurmctld >/dev/null || slurmctld
pgrep -x slurmd >/dev/null || slurmd
for _ in $(seq 100); do
  [[ "$(node_state)" =~ ^(idle|mixed|allocated) ]] && break
  sleep 0.2
done
state=$(node_state)
if [[ ! "$state" =~ ^(idle|mixed|allocated) ]]; then
  echo "slurm: node $NODE did not come up (state '${state:-none}'); see $STATE/slurmctld.log and $STATE/slurmd.log" >&2
  exit 1
fi
echo "slurm: node $NODE is $state ($CPUS CPUs, $MEMORY_MB MB)"
