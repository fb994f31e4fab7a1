#!/usr/bin/env bash
# Stop the cluster that tests/slurm/start.sh DIR started: cancel its jobs, then end
# each daemon by the PID recorded in DIR/pids (last started, first stopped).
set -uo pipefail
dir=$(realpath -m "${1:?usage: stop.sh DIR}")
[ -f "$dir/pids" ] || exit 0
if [ -x "$dir/bin/scancel" ]; then
  "$dir/bin/scancel" --full --user "$(id -un)" 2>/dev/null
  for _ in $(seq 20); do
    [ -z "$("$dir/bin/squeue" -h -t RUNNING,COMPLETING,PENDING 2>/dev/null)" ] && break
    sleep 0.5
  done
fi
for pid in $(tac "$dir/pids"); do
  kill -TERM "$pid" 2>/dev/null || continue
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
done
exit 0
