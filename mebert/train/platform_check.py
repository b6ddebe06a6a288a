"""What JAX runs on, said once at the start, and a stop when it is not what the run was meant for.

A GPU job whose jax lacks its CUDA plugin, or a TPU VM whose libtpu is held by a stale process,
falls back to CPU devices without an error, and a mesh of -1 axes then fits itself to them: the
job "runs", slowly, on the host. `--platform=gpu|tpu` (set by launch/slurm.sbatch and
launch/tpu_vm.sh) turns that into one line naming what was found and how to install the rest. A
mesh asking for more devices than there are stops in mebert.parallel.mesh, naming both counts.
"""

from __future__ import annotations

import logging

import jax

log = logging.getLogger(__name__)

_INSTALL = {
    "gpu": "pip install -r requirements-gpu.txt (jax[cuda12]; README, \"GPUs\")",
    "tpu": "pip install -r requirements-tpu.txt (jax[tpu]); a stale process may hold the chips: "
           "launch/tpu_vm.sh run frees them",
    "cpu": "JAX_PLATFORMS=cpu",
}


def describe() -> str:
  devices = jax.devices()
  kinds = sorted({d.device_kind for d in devices})
  return (f"{jax.default_backend()}: {len(devices)} devices ({', '.join(kinds)}), "
          f"{jax.local_device_count()} on this process, {jax.process_count()} processes")


def check(expected: str | None) -> str:
  """Logs the platform and device count; raises RuntimeError when it is not `expected`."""
  found = jax.default_backend()
  text = describe()
  if jax.process_index() == 0:
    log.info("platform %s", text)
  if expected and found != expected:
    raise RuntimeError(f"--platform={expected} but JAX found {text}; install: {_INSTALL[expected]}")
  return found
