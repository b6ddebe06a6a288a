"""A checkpoint write that fails (full disk, read-only directory) stops the run with a clear error and
leaves the steps already written intact. Real failures: WORKDIR/checkpoints is a small tmpfs that
the test fills up or remounts read-only (root can write to a chmod-ed directory, not to these)."""

import os
import subprocess

import numpy as np
import pytest
from tiny_run import tiny_config

from mebert.train import checkpoints, trainer


@pytest.fixture
def small_checkpoint_disk(tmp_path):
  """WORKDIR whose checkpoints/ is its own 8 MB file system."""
  workdir = tmp_path / "w"
  mount_point = workdir / "checkpoints"
  mount_point.mkdir(parents=True)
  result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount_point)],
                          capture_output=True, text=True)
  if result.returncode != 0:
    pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
  yield workdir
  subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


def _fill(directory, leave_bytes: int) -> None:
  path = os.path.join(directory, "filler")
  fd = os.open(path, os.O_WRONLY | os.O_CREAT)
  try:
    while True:
      os.write(fd, b"\0" * 65536)
  except OSError:
    pass
  os.close(fd)
  os.truncate(path, max(0, os.path.getsize(path) - leave_bytes))


def _run_until_the_write_fails(workdir) -> str:
  with pytest.raises(checkpoints.CheckpointError) as e:
    trainer.train_and_evaluate(tiny_config(), str(workdir))  # checkpoints every 3 steps: 6 fails
  message = str(e.value)
  assert "\n" not in message and len(message) < 500, message
  assert "step 6" in message and str(workdir / "checkpoints") in message
  assert "[3]" in message  # the intact steps
  return message


def _params_of_step(workdir, step):
  params, _ = checkpoints.restore_params(str(workdir), step)
  return params


@pytest.mark.parametrize("failure", ["full disk", "read-only"])
def test_a_failed_checkpoint_write_stops_with_the_reason_and_keeps_earlier_steps(
    small_checkpoint_disk, failure):
  import jax

  workdir = small_checkpoint_disk
  trainer.train_and_evaluate(tiny_config(**{"train.num_steps": 3}), str(workdir))
  before = _params_of_step(workdir, 3)
  if failure == "full disk":
    _fill(workdir / "checkpoints", leave_bytes=32 * 1024)
    reason = "No space left on device"
  else:
    subprocess.run(["mount", "-o", "remount,ro", str(workdir / "checkpoints")], check=True)
    reason = "Read-only file system"
  assert reason in _run_until_the_write_fails(workdir)
  assert checkpoints.Checkpointer(str(workdir), async_save=False).all_steps() == [3]
  after = _params_of_step(workdir, 3)
  for x, y in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_write_failure_reason_is_short_and_names_the_os_error():
  tensorstore_like = ValueError('RESOURCE_EXHAUSTED: Error writing "x" ... Failed to write 237 bytes '
                                'to file 18: No space left on device [tensorstore_spec=' + "{}" * 500)
  assert checkpoints._write_failure(tensorstore_like) == "No space left on device (ENOSPC)"
  assert checkpoints._write_failure(PermissionError(13, "Permission denied")).startswith(
      "Permission denied")
  other = checkpoints._write_failure(ValueError("x\n" * 400))
  assert "\n" not in other and len(other) <= 300
