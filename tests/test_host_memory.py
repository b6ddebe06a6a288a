"""mebert.host_memory: a computation's large scratch buffer is reused from run to run, not faulted
in afresh (the fine-tuning step's 190 MB scratch cost it 47,000 page faults per step)."""

import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]

# x @ w1 is a 72 MiB temporary: past glibc's 64 MB per-thread-arena heaps.
_PROBE = """
import resource, statistics
import mebert
import jax, jax.numpy as jnp
x = jnp.ones((32768, 64), jnp.float32)
w1 = jnp.ones((64, 576), jnp.float32)
w2 = jnp.ones((576, 8), jnp.float32)
f = jax.jit(lambda x, w1, w2: (jnp.tanh(x @ w1) @ w2).sum())
f(x, w1, w2).block_until_ready()
faults = []
for _ in range(7):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  f(x, w1, w2).block_until_ready()
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(statistics.median(faults))  # a run that grows the heap faults once; the median is steady
"""


def _faults_per_run(tuning: str) -> float:
  env = {k: v for k, v in os.environ.items() if k != "JAX_CPU_ENABLE_ASYNC_DISPATCH"}
  env.update(MEBERT_GLIBC_TUNING=tuning, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True,
                       timeout=300, check=True)
  return float(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(sys.platform != "linux", reason="glibc malloc tuning is Linux-only")
def test_large_scratch_buffers_are_reused_between_runs():
  with_tuning = _faults_per_run("1")
  without = _faults_per_run("0")
  # 72 MiB is 18,432 pages of 4 KB: glibc's defaults fault (nearly) all of them in every run.
  assert without > 9_000, without
  assert with_tuning < 1_000, with_tuning
