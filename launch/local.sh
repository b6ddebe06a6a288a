#!/usr/bin/env bash
# N processes of `python -m mebert.train` on this machine, as a multi-host run would have them:
# one JAX process each, joined through a coordinator on a free localhost port, each with its share
# of fake CPU devices. Logs go to one file per process; process 0's is shown as it is written.
# Waits for all; if any fails, stops the others and exits with its status.
#
#   launch/local.sh [--dry-run] N [train flags...]
#   launch/local.sh 2 --config=configs/pretrain/tiny.py --workdir=runs/tiny2
#
# Environment:
#   DRY_RUN=1                 print the commands instead of running them (same as --dry-run)
#   MEBERT_TOTAL_CPU_DEVICES  CPU devices over all processes (default 8); each gets TOTAL/N
#   PYTHON                    interpreter (default: python3)
#   LOG_DIR                   per-process logs (default: WORKDIR/logs/local-<time> for a local
#                             --workdir, else /tmp/mebert-local-<time>)
#   PORT                      coordinator port (default: a free one)
#   QUIET=1                   do not echo process 0's log to the terminal
#   GRACE=30                  seconds the others get to stop after a failure before SIGKILL
set -euo pipefail

dry_run=${DRY_RUN:-0}
if [[ ${1:-} == --dry-run ]]; then dry_run=1; shift; fi
if [[ $# -lt 1 || ! ${1} =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: $0 [--dry-run] N [train flags...]   (N = number of processes)" >&2
  exit 2
fi
num_processes=$1
shift

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${PYTHON:-python3}
total_devices=${MEBERT_TOTAL_CPU_DEVICES:-8}
if (( total_devices % num_processes )); then
  echo "error: MEBERT_TOTAL_CPU_DEVICES=$total_devices does not split over $num_processes processes" >&2
  exit 2
fi
devices_per_process=$(( total_devices / num_processes ))

workdir=""
for arg in "$@"; do
  case $arg in --workdir=*) workdir=${arg#--workdir=} ;; esac
done
stamp=$(date +%Y%m%d-%H%M%S)
if [[ -z ${LOG_DIR:-} ]]; then
  if [[ -n $workdir && $workdir != *://* ]]; then LOG_DIR=$workdir/logs/local-$stamp
  else LOG_DIR=/tmp/mebert-local-$stamp-$$; fi
fi

if [[ -z ${PORT:-} ]]; then
  if (( dry_run )); then PORT=PORT
  else
    PORT=$(python3 - <<'PY'
try:
  import portpicker
  print(portpicker.pick_unused_port())
except ImportError:
  import socket
  with socket.socket() as s:
    s.bind(("localhost", 0))
    print(s.getsockname()[1])
PY
)
  fi
fi

# Shell-quotes one word for display: bare when safe, else in single quotes.
q() {
  if [[ $1 =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then printf '%s' "$1"
  else printf "'%s'" "${1//\'/\'\\\'\'}"; fi
}

# The command line of process $1, quoted so that it can be pasted into a shell.
command_for() {
  local env_part
  env_part="JAX_PLATFORMS=${JAX_PLATFORMS:-cpu} PYTHONPATH=$(q "$repo")${PYTHONPATH:+:$(q "$PYTHONPATH")}"
  env_part+=" MEBERT_COORDINATOR_ADDRESS=localhost:$PORT MEBERT_NUM_PROCESSES=$num_processes"
  env_part+=" MEBERT_PROCESS_ID=$1 MEBERT_LOCAL_CPU_DEVICES=$devices_per_process"
  printf '%s %s -m mebert.train' "$env_part" "$(q "$python")"
  local a
  for a in "${@:2}"; do printf ' %s' "$(q "$a")"; done
}

echo "# $num_processes processes x $devices_per_process CPU devices, coordinator localhost:$PORT, logs in $LOG_DIR"
if (( dry_run )); then
  echo "mkdir -p $(q "$LOG_DIR")"
  for (( i = 0; i < num_processes; i++ )); do
    echo "$(command_for "$i" "$@") > $(q "$LOG_DIR/process_$i.log") 2>&1 &"
  done
  echo "wait  # all $num_processes; the first failure stops the others"
  exit 0
fi

mkdir -p "$LOG_DIR"
pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
}
trap 'echo "interrupted: stopping the processes (each saves a checkpoint)" >&2; cleanup; wait; exit 130' INT TERM

for (( i = 0; i < num_processes; i++ )); do
  env JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}" PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" \
      MEBERT_COORDINATOR_ADDRESS="localhost:$PORT" MEBERT_NUM_PROCESSES="$num_processes" \
      MEBERT_PROCESS_ID="$i" MEBERT_LOCAL_CPU_DEVICES="$devices_per_process" \
      "$python" -m mebert.train "$@" > "$LOG_DIR/process_$i.log" 2>&1 &
  pids+=($!)
done

tail_pid=""
if [[ ${QUIET:-0} != 1 ]]; then
  tail -n +1 -F "$LOG_DIR/process_0.log" 2>/dev/null &
  tail_pid=$!
fi

status=0
failed_at=0
remaining=$num_processes
declare -A done_pids=()
while (( remaining > 0 )); do
  for (( i = 0; i < num_processes; i++ )); do
    pid=${pids[$i]}
    [[ -n ${done_pids[$pid]:-} ]] && continue
    if ! kill -0 "$pid" 2>/dev/null; then
      rc=0
      wait "$pid" || rc=$?
      done_pids[$pid]=1
      remaining=$(( remaining - 1 ))
      if (( rc != 0 && status == 0 )); then
        status=$rc
        echo "process $i failed with status $rc (log: $LOG_DIR/process_$i.log); stopping the others" >&2
        tail -n 20 "$LOG_DIR/process_$i.log" >&2 || true
        cleanup
        failed_at=$SECONDS
      fi
    fi
  done
  if (( status != 0 && SECONDS - failed_at > ${GRACE:-30} )); then
    for pid in "${pids[@]}"; do [[ -z ${done_pids[$pid]:-} ]] && kill -KILL "$pid" 2>/dev/null || true; done
  fi
  (( remaining > 0 )) && sleep 0.5
done

if [[ -n $tail_pid ]]; then sleep 0.2; kill "$tail_pid" 2>/dev/null || true; wait "$tail_pid" 2>/dev/null || true; fi
if (( status == 0 )); then echo "all $num_processes processes finished; logs in $LOG_DIR"; fi
exit "$status"
