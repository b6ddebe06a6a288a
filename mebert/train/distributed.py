"""Joins JAX's multi-controller runtime when the environment says there are several processes.

TPU VM pods and SLURM are detected by JAX itself (`jax.distributed.initialize()` with no
arguments). Elsewhere (launch/local.sh, a hand-rolled cluster) the coordinator comes from
MEBERT_COORDINATOR_ADDRESS, MEBERT_NUM_PROCESSES and MEBERT_PROCESS_ID.
"""

from __future__ import annotations

import logging
import os

import jax

log = logging.getLogger(__name__)


def initialize_from_environment() -> None:
  env = os.environ
  if env.get("MEBERT_COORDINATOR_ADDRESS"):
    local_devices = env.get("MEBERT_LOCAL_CPU_DEVICES")
    if local_devices:  # the local launcher gives each process its share of the CPU devices
      jax.config.update("jax_num_cpu_devices", int(local_devices))
    jax.distributed.initialize(
        coordinator_address=env["MEBERT_COORDINATOR_ADDRESS"],
        num_processes=int(env["MEBERT_NUM_PROCESSES"]), process_id=int(env["MEBERT_PROCESS_ID"]),
        initialization_timeout=int(env.get("MEBERT_INIT_TIMEOUT", "300")))
  elif int(env.get("SLURM_NTASKS", "1")) > 1 or "," in env.get("TPU_WORKER_HOSTNAMES", ""):
    jax.distributed.initialize()  # auto-detects SLURM and Cloud TPU pods
  else:
    return
  log.info("process %d of %d, %d local / %d global devices", jax.process_index(),
           jax.process_count(), jax.local_device_count(), jax.device_count())
