"""Many processes: joining JAX's multi-controller runtime, data-iterator checkpoints that resume on
another process count, and an opt-in record of the examples each process trained on.

Joining. TPU VM pods, SLURM and Open MPI are detected by JAX itself (`jax.distributed.initialize()`
with no arguments). Elsewhere (launch/local.sh, a hand-rolled cluster) the coordinator comes from
MEBERT_COORDINATOR_ADDRESS, MEBERT_NUM_PROCESSES and MEBERT_PROCESS_ID; MEBERT_LOCAL_CPU_DEVICES
gives a CPU process its number of devices. Processes other than 0 log warnings and errors only
(MEBERT_LOG_ALL_PROCESSES=1 keeps their INFO lines).

Elastic data resume. The pipeline (mebert.data.pipeline) gives process i of n the elements i, i+n,
i+2n, ... of one global example stream, and a grain iterator's state is the count of elements it
has consumed, {"next_index": k}, the same k on every process since all take the same number of
batches of the same size. So k*n global elements are consumed, and a run on n' processes resumes
each at k*n/n': together they continue at global element k*n, no example repeated or skipped.
Packed rows (data.pack) work the same way with rows for elements; their state also holds each
packed stream's own state, and the states of all processes merge into one (data/packing.py).
`DataSave`/`DataRestore` write grain's own files (process_<i>-of-<n>.json) and, on restore,
rescale when the checkpoint was written by another process count.

Example-id record. With MEBERT_RECORD_EXAMPLE_IDS=1 the trainer appends every train batch's
`example_ids` to WORKDIR/example_ids/process_<i>-of-<n>.jsonl, one {"step", "ids"} line per step,
so a test (or a suspicious user) can check that the stream neither repeats nor skips examples.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from grain.checkpoint import CheckpointHandler as _GrainHandler

from mebert.data import packing
from mebert.parallel.prefetch import DevicePrefetcher

log = logging.getLogger(__name__)

RECORD_ENV = "MEBERT_RECORD_EXAMPLE_IDS"


def _auto_detected_cluster(env) -> bool:
  return (int(env.get("SLURM_NTASKS", "1")) > 1
          or int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1
          or "," in env.get("TPU_WORKER_HOSTNAMES", "")
          or int(env.get("MEGASCALE_NUM_SLICES", "1")) > 1)


_runtime_started = False


def runtime_started() -> bool:
  """Whether this process joined JAX's multi-controller runtime (jax.distributed.initialize)."""
  return _runtime_started


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
  elif _auto_detected_cluster(env):
    jax.distributed.initialize()  # auto-detects SLURM, Open MPI and Cloud TPU pods
  else:
    return
  global _runtime_started
  _runtime_started = True
  log.info("process %d of %d, %d local / %d global devices", jax.process_index(),
           jax.process_count(), jax.local_device_count(), jax.device_count())
  if jax.process_index() != 0 and not env.get("MEBERT_LOG_ALL_PROCESSES"):
    logging.getLogger().setLevel(logging.WARNING)  # one process reports; the others only complain


# ---------------------------------------------------------------------------------------------
# Data-iterator checkpoints that survive a change of process count.

_STATE_FILE = re.compile(r"process_(\d+)-of-(\d+)\.json$")


def rescaled_state(states: dict[int, dict], process_count: int) -> dict:
  """The iterator state for any process of `process_count` from all processes' saved states
  ({process index: state}, written by len(states) processes)."""
  old_count = len(states)
  if sorted(states) != list(range(old_count)):
    raise ValueError(f"data states of processes {sorted(states)} are not a complete set")
  first = states[0]
  if packing.is_packed_state(first):  # data.pack: every stream's state, merged
    return packing.merged_state(states, process_count)
  if not isinstance(first, dict) or set(first) != {"next_index"}:
    raise ValueError(f"cannot rescale data-iterator state {str(first)[:200]} to {process_count} "
                     "processes: only the plain pipeline's {'next_index': k} is supported "
                     "(not data.num_workers > 0); resume on the original process count")
  positions = {int(s["next_index"]) for s in states.values()}
  if len(positions) != 1:
    raise ValueError(f"processes saved different data positions {sorted(positions)}")
  consumed = positions.pop() * old_count  # elements of the global stream
  if consumed % process_count:
    raise ValueError(f"{consumed} consumed examples do not split over {process_count} processes")
  return {"next_index": consumed // process_count}


class ElasticDataHandler(_GrainHandler):
  """grain's Orbax handler (same files); restores on another process count by rescaling, and takes
  the trainer's DevicePrefetcher where grain's takes its iterator (whose type picks the format)."""

  def save(self, directory: epath.Path, item=None, args=None):
    item = item or args.item
    state = item.get_state()
    # grain's own format: a DatasetIterator's dict as JSON, a DataLoader's bytes as they are.
    text = json.dumps(state, indent=4) if _json_state(item) else state.decode()
    name = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
    (epath.Path(directory) / name).write_text(text)

  def restore(self, directory: epath.Path, item=None, args=None):
    item = item or args.item
    index, count = jax.process_index(), jax.process_count()
    own = epath.Path(directory) / f"process_{index}-of-{count}.json"
    if own.exists():
      text = own.read_text()
      state = json.loads(text) if _json_state(item) else text.encode()
    else:
      state = self._rescaled(directory, count)
    item.set_state(state)
    item.start_prefetch()
    return item

  @staticmethod
  def _rescaled(directory: epath.Path, count: int) -> dict:
    states, counts = {}, set()
    for path in epath.Path(directory).iterdir():
      match = _STATE_FILE.search(path.name)
      if match:
        states[int(match.group(1))] = json.loads(path.read_text())
        counts.add(int(match.group(2)))
    if len(counts) != 1:
      raise ValueError(f"{directory}: expected the data states of one process count, found "
                       f"{sorted(counts) or 'none'}")
    state = rescaled_state(states, count)
    log.info("data iterator: checkpoint written by %d processes, resuming on %d at %s",
             counts.pop(), count, state)
    return state


def _json_state(item) -> bool:
  """Whether the iterator (under a DevicePrefetcher, its source) keeps a JSON-able dict state (a
  grain DatasetIterator, or any batch source of the loop's), not a DataLoader's bytes."""
  base = item.source if isinstance(item, DevicePrefetcher) else item
  return isinstance(base, grain.DatasetIterator) or isinstance(base.get_state(), dict)


@ocp.args.register_with_handler(ElasticDataHandler, for_save=True)
@dataclasses.dataclass
class DataSave(ocp.args.CheckpointArgs):
  """Saves a grain iterator (drop-in for grain.checkpoint.CheckpointSave)."""

  item: object


@ocp.args.register_with_handler(ElasticDataHandler, for_restore=True)
@dataclasses.dataclass
class DataRestore(ocp.args.CheckpointArgs):
  """Restores a grain iterator, on any process count (for grain.checkpoint.CheckpointRestore)."""

  item: object


# ---------------------------------------------------------------------------------------------
# The opt-in record of consumed example ids.


class ExampleIdRecorder:
  """Callable (step, batch): appends batch["example_ids"] to this process's file when
  MEBERT_RECORD_EXAMPLE_IDS is set; does nothing otherwise."""

  def __init__(self, workdir: str):
    self.path = None
    if os.environ.get(RECORD_ENV, "") not in ("", "0"):
      directory = epath.Path(workdir) / "example_ids"
      directory.mkdir(parents=True, exist_ok=True)
      self.path = directory / f"process_{jax.process_index()}-of-{jax.process_count()}.jsonl"

  def __call__(self, step: int, batch: dict) -> None:
    if self.path is None:
      return
    ids = [i for i in np.asarray(batch["example_ids"]).ravel().tolist() if i >= 0]  # -1: empty slot
    with self.path.open("a") as f:
      f.write(json.dumps({"step": int(step), "ids": ids}) + "\n")


def read_example_ids(workdir: str) -> dict[int, list[int]]:
  """{step: sorted ids of every record of that step, all processes and runs} from a workdir."""
  steps: dict[int, list[int]] = {}
  for path in sorted((epath.Path(workdir) / "example_ids").glob("process_*.jsonl")):
    for line in path.read_text().splitlines():
      record = json.loads(line)
      steps.setdefault(int(record["step"]), []).extend(int(i) for i in record["ids"])
  return {step: sorted(ids) for step, ids in sorted(steps.items())}
