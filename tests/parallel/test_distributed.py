"""Data-iterator state across process counts, the example-id record, and the batch layout check."""

import json

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest

import parallel_helpers as H
from mebert.parallel import mesh as mesh_lib
from mebert.train import distributed


def test_rescaled_state_continues_the_global_stream():
  # 2 processes consumed 16 elements each = 32 global; 1 process resumes at 32, 4 at 8 each.
  states = {0: {"next_index": 16}, 1: {"next_index": 16}}
  assert distributed.rescaled_state(states, 1) == {"next_index": 32}
  assert distributed.rescaled_state(states, 4) == {"next_index": 8}
  assert distributed.rescaled_state(states, 2) == {"next_index": 16}


@pytest.mark.parametrize("states, count, message", [
    ({0: {"next_index": 16}}, 3, "do not split"),
    ({0: {"next_index": 16}, 2: {"next_index": 16}}, 1, "complete set"),
    ({0: {"next_index": 16}, 1: {"next_index": 12}}, 1, "different data positions"),
    ({0: {"workers_state": {}, "next_index": 1}}, 2, "only the plain pipeline"),
])
def test_rescaled_state_refuses_what_it_cannot_continue(states, count, message):
  with pytest.raises(ValueError, match=message):
    distributed.rescaled_state(states, count)


def _iterator():
  ds = grain.MapDataset.range(1000).shuffle(seed=3).repeat(None)
  return iter(ds.to_iter_dataset().batch(4, drop_remainder=True))


def test_data_checkpoint_restores_written_by_another_process_count(tmp_path):
  """Files as two processes would write them; this single process resumes at global element 2k."""
  reference = _iterator()
  consumed = [next(reference) for _ in range(6)]  # 24 elements: 12 per process of two
  step_dir = tmp_path / "data"
  step_dir.mkdir()
  for i in range(2):
    (step_dir / f"process_{i}-of-2.json").write_text(json.dumps({"next_index": 12}))
  restored = distributed.ElasticDataHandler().restore(step_dir, args=distributed.DataRestore(_iterator()))
  np.testing.assert_array_equal(next(restored), next(reference))
  assert len(consumed) == 6

  # Same process count: grain's own file is read as it is.
  (step_dir / "process_0-of-1.json").write_text(json.dumps({"next_index": 4}))
  again = distributed.ElasticDataHandler().restore(step_dir, args=distributed.DataRestore(_iterator()))
  np.testing.assert_array_equal(next(again), consumed[1])


def test_data_items_round_trip_through_orbax(tmp_path):
  it = _iterator()
  for _ in range(3):
    next(it)
  manager = ocp.CheckpointManager(tmp_path)
  manager.save(1, args=ocp.args.Composite(data=distributed.DataSave(it)))
  manager.wait_until_finished()
  assert json.loads((tmp_path / "1" / "data" / "process_0-of-1.json").read_text()) == {"next_index": 12}
  fresh = _iterator()
  ocp.CheckpointManager(tmp_path).restore(1, args=ocp.args.Composite(data=distributed.DataRestore(fresh)))
  np.testing.assert_array_equal(next(fresh), next(it))


def test_example_ids_are_recorded_only_when_asked(tmp_path, monkeypatch):
  batch = {"example_ids": np.array([5, 3, 9])}
  monkeypatch.delenv(distributed.RECORD_ENV, raising=False)
  distributed.ExampleIdRecorder(str(tmp_path))(1, batch)
  assert not (tmp_path / "example_ids").exists()
  monkeypatch.setenv(distributed.RECORD_ENV, "1")
  record = distributed.ExampleIdRecorder(str(tmp_path))
  record(1, batch)
  record(2, {"example_ids": np.array([1, 2, 4])})
  record(3, {"example_ids": np.array([[7, 6, -1], [8, -1, -1]])})  # packed rows: empty slots -1
  assert distributed.read_example_ids(str(tmp_path)) == {1: [3, 5, 9], 2: [1, 2, 4], 3: [6, 7, 8]}


def test_single_process_needs_no_distributed_runtime(monkeypatch):
  for key in ("MEBERT_COORDINATOR_ADDRESS", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE",
              "TPU_WORKER_HOSTNAMES", "MEGASCALE_NUM_SLICES"):
    monkeypatch.delenv(key, raising=False)
  distributed.initialize_from_environment()  # returns without touching jax.distributed
  assert distributed._auto_detected_cluster({"SLURM_NTASKS": "16"})
  assert distributed._auto_detected_cluster({"TPU_WORKER_HOSTNAMES": "10.0.0.1,10.0.0.2"})
  assert not distributed._auto_detected_cluster({"SLURM_NTASKS": "1", "TPU_WORKER_HOSTNAMES": "h"})


class _Device:
  def __init__(self, process_index):
    self.process_index = process_index


def test_batch_layout_check_refuses_tensor_groups_across_processes(monkeypatch):
  class FakeMesh:  # 2 processes x 2 devices, tensor=2 laid across the processes
    axis_names = mesh_lib.MESH_AXES
    shape = {"data": 1, "fsdp": 2, "tensor": 2}
    devices = np.array([[[_Device(0), _Device(1)], [_Device(0), _Device(1)]]])

  assert mesh_lib.process_batch_shards(H.make_mesh((2, 2, 2))) == 4  # one process holds all 4
  with pytest.raises(ValueError, match="spans processes"):
    mesh_lib.process_batch_shards.__wrapped__(FakeMesh())
  FakeMesh.devices = np.array([[[_Device(0), _Device(0)], [_Device(1), _Device(1)]]])
  monkeypatch.setattr(mesh_lib.jax, "process_index", lambda: 1)
  assert mesh_lib.process_batch_shards.__wrapped__(FakeMesh()) == 1
