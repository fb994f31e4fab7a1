#!/usr/bin/env bash
# Install Debian's SLURM and munge when they are missing (needs root, as on CI).
set -euo pipefail
missing=0
for bin in slurmctld slurmd munged sbatch squeue; do
  command -v "$bin" >/dev/null 2>&1 || [ -x "/usr/sbin/$bin" ] || missing=1
done
[ "$missing" = 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "SLURM (slurm-wlm, munge) is not installed and installing it needs root" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq slurm-wlm munge >/dev/null
