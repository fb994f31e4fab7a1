#!/usr/bin/env bash
# Start a one-node SLURM cluster on this machine, with every file under DIR:
#   tests/slurm/start.sh DIR [N_FAKE_GPUS]
# munged, slurmctld and slurmd run in the background as the current user's daemons
# (root on CI); their PIDs go to DIR/pids, one per line, for tests/slurm/stop.sh.
# Clients reach the cluster through DIR/bin, wrappers that set SLURM_CONF: put it first
# on PATH. (The executor's in-job step drops SLURM_* variables, so exporting SLURM_CONF
# alone would not reach the srun inside a job; PATH does.)
# The node gets N_FAKE_GPUS (default 2) GPUs of type "fake" for scheduling only: gres.conf
# points at character devices made with mknod, so jobs asking --gpus get
# CUDA_VISIBLE_DEVICES but no real device.
set -euo pipefail
dir=$(realpath -m "${1:?usage: start.sh DIR [N_FAKE_GPUS]}")
gpus=${2:-2}
here=$(dirname "$(realpath "$0")")
"$here/install.sh"

sbin() { command -v "$1" 2>/dev/null || echo "/usr/sbin/$1"; }
host=$(hostname -s)
user=$(id -un)
ctld_port=${SLURM_TEST_CTLD_PORT:-16817}
slurmd_port=${SLURM_TEST_SLURMD_PORT:-16818}
mem_mb=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
cpus=$(nproc)

mkdir -p "$dir"/{munge,state,spool,log,bin,dev}
chmod 700 "$dir/munge"
: > "$dir/pids"

# munge: a fresh key and a private socket, so a system munged (if any) is left alone.
dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
chmod 400 "$dir/munge/munge.key"
socket="$dir/munge/munge.socket"
"$(sbin munged)" -F --force --key-file="$dir/munge/munge.key" --socket="$socket" \
  --pid-file="$dir/munge/munged.pid" --log-file="$dir/log/munged.log" --seed-file="$dir/munge/munged.seed" \
  >"$dir/log/munged.out" 2>&1 &
echo "$!" >> "$dir/pids"
for _ in $(seq 50); do [ -S "$socket" ] && break; sleep 0.1; done
[ -S "$socket" ] || { echo "munged did not start; see $dir/log/munged.log" >&2; exit 1; }

gres_node=""
if [ "$gpus" -gt 0 ]; then
  : > "$dir/gres.conf"
  for i in $(seq 0 $((gpus - 1))); do
    [ -e "$dir/dev/nvidia$i" ] || mknod "$dir/dev/nvidia$i" c 195 "$i"
    echo "NodeName=$host Name=gpu Type=fake File=$dir/dev/nvidia$i" >> "$dir/gres.conf"
  done
  gres_node="Gres=gpu:fake:$gpus"
fi

cat > "$dir/slurm.conf" <<CONF
ClusterName=slttest
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=$user
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$socket
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
# squeue status polling needs finished jobs to stay visible; the executor wants >= 3 x its first poll delay.
# The test reads every job's record with scontrol after the whole run, so keep records for an hour: at 300 s
# a run slowed by a loaded machine lost its first jobs' records (KeyError 'JobState').
MinJobAge=3600
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
# Without slurmdbd, a text file records every finished job (id, name, state, exit code).
JobCompType=jobcomp/filetxt
JobCompLoc=$dir/log/jobcomp.log
${gres_node:+GresTypes=gpu}
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb $gres_node State=UNKNOWN
PartitionName=local Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF

for tool in srun sbatch squeue sacct scontrol sinfo scancel; do
  real=$(command -v "$tool")
  printf '#!/bin/sh\nexport SLURM_CONF=%s\nexec %s "$@"\n' "$dir/slurm.conf" "$real" > "$dir/bin/$tool"
  chmod +x "$dir/bin/$tool"
done

"$(sbin slurmctld)" -D -i -f "$dir/slurm.conf" >"$dir/log/slurmctld.out" 2>&1 &
echo "$!" >> "$dir/pids"
"$(sbin slurmd)" -D -f "$dir/slurm.conf" >"$dir/log/slurmd.out" 2>&1 &
echo "$!" >> "$dir/pids"

for _ in $(seq 120); do
  for pid in $(cat "$dir/pids"); do
    kill -0 "$pid" 2>/dev/null && continue
    echo "a SLURM daemon (PID $pid) exited during startup; logs in $dir/log" >&2
    tail -n 5 "$dir/log/slurmctld.log" "$dir/log/slurmd.log" >&2 || true
    exit 1
  done
  state=$(timeout 5 "$dir/bin/sinfo" -h -o %T 2>/dev/null || true)
  case "$state" in idle*) echo "SLURM is up: node $host idle, partition local, $gpus fake GPU(s)"; exit 0 ;; esac
  sleep 0.5
done
echo "the node did not become idle (state: ${state:-none}); logs in $dir/log" >&2
tail -n 20 "$dir/log/slurmctld.log" "$dir/log/slurmd.log" >&2 || true
exit 1
