"""Two processes joined by jax.distributed: when only process 1's disk is full, both stop at the
same save with a one-line error, instead of process 0 waiting forever in the collective save."""

import os
import socket
import subprocess
import sys
import textwrap

import pytest

import parallel_helpers as H

WORKER = textwrap.dedent("""
    import os, sys, types
    os.environ["XLA_FLAGS"] = ""  # one CPU device per process
    import jax
    jax.config.update("jax_platforms", "cpu")
    port, process_id, workdir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2,
                               process_id=process_id, initialization_timeout=60)
    import jax.numpy as jnp
    from mebert.train import checkpoints
    from mebert.train.steps import TrainState

    if process_id == 1:  # this host's disk is full
      real = os.statvfs
      full = lambda path: types.SimpleNamespace(f_bavail=0, f_frsize=real(path).f_frsize)
      checkpoints.os.statvfs = full
    zero = jnp.zeros((), jnp.int32)
    state = TrainState(step=zero, params={"w": jnp.ones(1024)}, opt_state=(), nonfinite_in_row=zero,
                       nonfinite_total=zero)
    ckpt = checkpoints.Checkpointer(workdir, async_save=False)
    try:
      ckpt.save(3, state, None, {})
    except checkpoints.CheckpointError as e:
      print("ERROR", e, flush=True)
      sys.exit(3)
    print("SAVED", flush=True)
""")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_a_full_disk_on_one_host_stops_both_processes_at_the_same_save(tmp_path):
  port = str(_free_port())
  env = dict(os.environ, PYTHONPATH=str(H.REPO), JAX_PLATFORMS="cpu")
  workers = [subprocess.Popen([sys.executable, "-c", WORKER, port, str(i), str(tmp_path / "w")],
                              env=env, cwd=H.REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in range(2)]
  outputs = [w.communicate(timeout=300) for w in workers]
  for w, (out, err) in zip(workers, outputs):
    assert w.returncode == 3, f"{out}\n{err[-3000:]}"
  line0 = [l for l in outputs[0][0].splitlines() if l.startswith("ERROR")]
  line1 = [l for l in outputs[1][0].splitlines() if l.startswith("ERROR")]
  assert len(line0) == len(line1) == 1
  assert "could not write checkpoint step 3" in line0[0] and "process(es) [1]" in line0[0]
  assert "No space left on device" in line1[0] and "MiB free" in line1[0]
  assert not (tmp_path / "w" / "checkpoints" / "3").exists()
