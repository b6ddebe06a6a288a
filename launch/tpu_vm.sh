#!/usr/bin/env bash
# Cloud TPU VMs (single host or pod slice) with gcloud: create, copy the code, install, run the same
# `python -m mebert.train ...` on every worker, stream worker 0's log, tear down.
#
#   launch/tpu_vm.sh [--dry-run] COMMAND [-- train flags...]
#
# Commands:
#   create    create the TPU VM (QUEUED=1: a queued resource, waited on until ACTIVE)
#   copy      tar the working tree (git's tracked and unignored files) and scp it to every worker
#   install   a virtualenv with requirements-tpu.txt (requirements.txt and jax[tpu]) on every worker
#   run       on every worker: stop stale TPU processes, rm -f /tmp/libtpu_lockfile, then
#             python -m mebert.train FLAGS; worker 0's log is streamed here, every worker's is kept
#             in LOG_DIR, and the first failing worker stops the run (exit status: its status)
#   up        create, copy, install, run
#   logs      (DETACH=1 runs) stream worker 0's log of RUN_NAME
#   stop      stop the training processes on every worker
#   delete    tear down the TPU VM (or the queued resource and its VM)
#
# Environment:
#   TPU_NAME, ZONE            required
#   PROJECT                   gcloud project (default: gcloud's configured one)
#   ACCELERATOR_TYPE          default v5litepod-16 (4 hosts x 4 chips)
#   RUNTIME_VERSION           default v2-alpha-tpuv5-lite
#   QUEUED=1                  use a queued resource named QR_NAME (default TPU_NAME-qr)
#   SPOT=1 / RESERVED=1       capacity type
#   NUM_WORKERS               hosts in the slice (default: asked from gcloud; 1 in a dry run)
#   REMOTE_DIR                code directory on the workers (default mebert, under ~)
#   REMOTE_PYTHON             interpreter for the venv (default python3.11; installed with apt if absent)
#   RUN_NAME                  default run-<time>; LOG_DIR default logs/tpu-TPU_NAME-RUN_NAME
#   DETACH=1                  start the run with nohup on the workers and return (see `logs`)
#   DRY_RUN=1                 print every command instead of running it (same as --dry-run)
#
# The workdir should be a gs:// bucket: every worker writes its checkpoint shards and reads the
# vocabulary from it. JAX finds the other workers by itself (mebert.train.distributed).
set -euo pipefail

dry_run=${DRY_RUN:-0}
if [[ ${1:-} == --dry-run ]]; then dry_run=1; shift; fi
command=${1:-}
[[ $# -gt 0 ]] && shift
if [[ ${1:-} == -- ]]; then shift; fi
train_flags=("$@")

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//' >&2; exit 2; }
case $command in create|copy|install|run|up|logs|stop|delete) ;; *) usage ;; esac
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
accelerator=${ACCELERATOR_TYPE:-v5litepod-16}
runtime=${RUNTIME_VERSION:-v2-alpha-tpuv5-lite}
qr_name=${QR_NAME:-$TPU_NAME-qr}
remote_dir=${REMOTE_DIR:-mebert}
remote_python=${REMOTE_PYTHON:-python3.11}
run_name=${RUN_NAME:-run-$(date +%Y%m%d-%H%M%S)}
log_dir=${LOG_DIR:-logs/tpu-$TPU_NAME-$run_name}
gcloud_common=(--zone="$ZONE")
[[ -n ${PROJECT:-} ]] && gcloud_common+=(--project="$PROJECT")

# Shell-quotes one word for display: bare when safe, else in single quotes.
q() {
  if [[ $1 =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then printf '%s' "$1"
  else printf "'%s'" "${1//\'/\'\\\'\'}"; fi
}

# Prints (dry run) or runs a command.
run() {
  if (( dry_run )); then
    local out="" a
    for a in "$@"; do out+=" $(q "$a")"; done
    echo "${out# }"
  else
    "$@"
  fi
}

ssh_workers() {  # ssh_workers WORKER(S) REMOTE_COMMAND
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${gcloud_common[@]}" --worker="$1" --command="$2"
}

num_workers() {
  if [[ -n ${NUM_WORKERS:-} ]]; then echo "$NUM_WORKERS"; return; fi
  if (( dry_run )); then echo 1; return; fi
  gcloud compute tpus tpu-vm describe "$TPU_NAME" "${gcloud_common[@]}" \
      --format='value(networkEndpoints[].ipAddress)' | tr ';,' '\n\n' | grep -c .
}

capacity_flags() {
  if [[ ${SPOT:-0} == 1 ]]; then echo --spot; elif [[ ${RESERVED:-0} == 1 ]]; then echo --reserved; fi
}

do_create() {
  local capacity
  capacity=$(capacity_flags)
  if [[ ${QUEUED:-0} == 1 ]]; then
    run gcloud compute tpus queued-resources create "$qr_name" "${gcloud_common[@]}" \
        --node-id="$TPU_NAME" --accelerator-type="$accelerator" --runtime-version="$runtime" ${capacity}
    if (( dry_run )); then
      echo "# wait until: gcloud compute tpus queued-resources describe $qr_name --zone=$ZONE --format='value(state.state)' prints ACTIVE"
      return
    fi
    local state=""
    until [[ $state == ACTIVE ]]; do
      state=$(gcloud compute tpus queued-resources describe "$qr_name" "${gcloud_common[@]}" \
              --format='value(state.state)')
      case $state in FAILED|SUSPENDED) echo "queued resource $qr_name is $state" >&2; exit 1 ;; esac
      echo "queued resource $qr_name: ${state:-unknown}; waiting" >&2
      [[ $state == ACTIVE ]] || sleep 30
    done
  else
    run gcloud compute tpus tpu-vm create "$TPU_NAME" "${gcloud_common[@]}" \
        --accelerator-type="$accelerator" --version="$runtime" ${capacity}
  fi
}

do_copy() {
  local tarball=/tmp/mebert-$TPU_NAME.tgz
  if (( dry_run )); then
    echo "git -C $(q "$repo") ls-files -z --cached --others --exclude-standard | tar -czf $tarball -C $(q "$repo") --null -T -"
  else
    git -C "$repo" ls-files -z --cached --others --exclude-standard |
        tar -czf "$tarball" -C "$repo" --null -T -
  fi
  run gcloud compute tpus tpu-vm scp "$tarball" "$TPU_NAME:mebert.tgz" "${gcloud_common[@]}" --worker=all
  ssh_workers all "mkdir -p ~/$remote_dir && tar -xzf ~/mebert.tgz -C ~/$remote_dir && rm ~/mebert.tgz"
}

do_install() {
  ssh_workers all "set -e; command -v $remote_python >/dev/null || { sudo apt-get update -qq && sudo apt-get install -y -qq $remote_python $remote_python-venv; }; cd ~/$remote_dir && { [ -x .venv/bin/python ] || $remote_python -m venv .venv; } && .venv/bin/pip install -q -U pip && if [ -f requirements-tpu.txt ]; then .venv/bin/pip install -q -r requirements-tpu.txt; else .venv/bin/pip install -q -r requirements.txt 'jax[tpu]'; fi"
}

# Frees the chips: a crashed or interrupted earlier run keeps /dev/accel* (v4) or /dev/vfio/* (v5e,
# v6e) open, and libtpu refuses to start while its lockfile exists.
readonly free_tpu='pids=$(sudo lsof -t /dev/accel* /dev/vfio/* 2>/dev/null | sort -u); if [ -n "$pids" ]; then echo "killing stale TPU processes: $pids"; sudo kill -9 $pids; sleep 1; fi; sudo rm -f /tmp/libtpu_lockfile'

train_command() {
  # --platform=tpu: a worker whose chips are held or whose libtpu is missing stops at once instead
  # of training on its CPU.
  local cmd="cd ~/$remote_dir && .venv/bin/python -m mebert.train --platform=tpu" a
  for a in "${train_flags[@]}"; do cmd+=" $(q "$a")"; done
  echo "$cmd"
}

do_run() {
  [[ ${#train_flags[@]} -gt 0 ]] || { echo "run: give the train flags after --" >&2; exit 2; }
  local workers i
  workers=$(num_workers)
  if (( dry_run )) && [[ -z ${NUM_WORKERS:-} ]]; then
    echo "# workers: gcloud compute tpus tpu-vm describe $TPU_NAME --zone=$ZONE --format='value(networkEndpoints[].ipAddress)' (dry run: NUM_WORKERS=1)"
  fi
  if [[ ${DETACH:-0} == 1 ]]; then
    ssh_workers all "$free_tpu; mkdir -p ~/$remote_dir/logs && nohup bash -c $(q "$(train_command)") > ~/$remote_dir/logs/$run_name.log 2>&1 < /dev/null &"
    echo "# started $run_name on $workers worker(s); follow it with: RUN_NAME=$run_name $0 logs"
    return
  fi
  run mkdir -p "$log_dir"
  local pids=()
  for (( i = 0; i < workers; i++ )); do
    if (( dry_run )); then
      echo "$(ssh_workers "$i" "$free_tpu; $(train_command)") > $(q "$log_dir/worker_$i.log") 2>&1 &"
    else
      ssh_workers "$i" "$free_tpu; $(train_command)" > "$log_dir/worker_$i.log" 2>&1 &
      pids+=($!)
    fi
  done
  if (( dry_run )); then
    echo "tail -n +1 -F $(q "$log_dir/worker_0.log") &"
    echo "wait  # all $workers workers; the first failure stops the others"
    return
  fi
  tail -n +1 -F "$log_dir/worker_0.log" 2>/dev/null &
  local tail_pid=$! status=0 remaining=$workers pid rc
  declare -A finished=()
  trap 'echo "interrupted: stopping the workers" >&2; do_stop; exit 130' INT TERM
  while (( remaining > 0 )); do
    for (( i = 0; i < workers; i++ )); do
      pid=${pids[$i]}
      [[ -n ${finished[$pid]:-} ]] && continue
      kill -0 "$pid" 2>/dev/null && continue
      rc=0; wait "$pid" || rc=$?
      finished[$pid]=1; remaining=$(( remaining - 1 ))
      if (( rc != 0 && status == 0 )); then
        status=$rc
        echo "worker $i failed with status $rc (log: $log_dir/worker_$i.log); stopping the others" >&2
        tail -n 20 "$log_dir/worker_$i.log" >&2 || true
        do_stop || true
      fi
    done
    (( remaining > 0 )) && sleep 2
  done
  kill "$tail_pid" 2>/dev/null || true
  (( status == 0 )) && echo "run $run_name finished on $workers workers; logs in $log_dir"
  return "$status"
}

do_logs() {
  ssh_workers 0 "tail -n +1 -F ~/$remote_dir/logs/$run_name.log"
}

do_stop() {
  # The training processes are the ones holding the chips.
  ssh_workers all 'pids=$(sudo lsof -t /dev/accel* /dev/vfio/* 2>/dev/null | sort -u); if [ -n "$pids" ]; then sudo kill -TERM $pids; fi; true'
}

do_delete() {
  if [[ ${QUEUED:-0} == 1 ]]; then
    run gcloud compute tpus queued-resources delete "$qr_name" "${gcloud_common[@]}" --force --quiet
  else
    run gcloud compute tpus tpu-vm delete "$TPU_NAME" "${gcloud_common[@]}" --quiet
  fi
}

case $command in
  create) do_create ;;
  copy) do_copy ;;
  install) do_install ;;
  run) do_run ;;
  up) do_create; do_copy; do_install; do_run ;;
  logs) do_logs ;;
  stop) do_stop ;;
  delete) do_delete ;;
esac
