"""Test setup: 8 fake CPU devices for sharding tests, set before JAX starts any backend."""

import os
import pathlib

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Tests build the built-in corpus many times: keep the extracted documents (child processes too).
os.environ.setdefault("MEBERT_CACHE_DIR", "/tmp/mebert-test-cache")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
# Tests run tiny models, where XLA's optimisation passes cost far more time than they save, and
# many tests compile the same programs: skip most passes and cache compiled programs on disk.
jax.config.update("jax_disable_most_optimizations", True)
jax.config.update("jax_compilation_cache_dir",
                  os.environ.get("MEBERT_TEST_JAX_CACHE", "/tmp/mebert-test-jax-cache"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
# The suite runs in the environment mebert's entrypoints set up (importing mebert no longer does):
# glibc's allocator tuning and inline CPU dispatch (mebert/host_memory.py).
from mebert import host_memory  # noqa: E402

host_memory.configure()

from absl import flags  # noqa: E402

# grain reads absl flags; under pytest nothing parses them.
flags.FLAGS.mark_as_parsed()

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
# The real datasets beside the checkout (../shared/data); MEBERT_SHARED_DATA points elsewhere
# (a git worktree of the repository, or a copy of the data on another disk).
SHARED_DATA = pathlib.Path(os.environ.get("MEBERT_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
  if not SHARED_DATA.is_dir():
    pytest.skip(f"real datasets not found at {SHARED_DATA}")
  return SHARED_DATA


@pytest.fixture
def crash_after_saving(monkeypatch):
  """crash_after_saving(step): the next run dies (KeyboardInterrupt, as a kill would stop it) right
  after its checkpoint of `step` is written."""
  from mebert.train import checkpoints

  original = checkpoints.Checkpointer.save

  def arm(at_step: int) -> None:
    def save(self, step, *args, **kwargs):
      saved = original(self, step, *args, **kwargs)
      if step == at_step:
        monkeypatch.setattr(checkpoints.Checkpointer, "save", original)
        raise KeyboardInterrupt(f"simulated kill after the step-{at_step} checkpoint")
      return saved

    monkeypatch.setattr(checkpoints.Checkpointer, "save", save)

  return arm


def pytest_runtest_logreport(report):
  """With MEBERT_FAILURES_FILE set, every failure is appended to that file as it happens: CI's slow
  step may be cut short by its time limit, and what had failed by then must still fail CI."""
  path = os.environ.get("MEBERT_FAILURES_FILE")
  if path and report.failed and "PYTEST_XDIST_WORKER" not in os.environ:  # the controller writes
    with open(path, "a", encoding="utf-8") as f:
      f.write(f"{report.nodeid} ({report.when})\n")
