"""Device prefetch: batches put ahead, and an iterator state that counts only the consumed ones."""

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from mebert.parallel.prefetch import DevicePrefetcher
from mebert.train import distributed


def _iterator():
  ds = grain.MapDataset.range(1000).shuffle(seed=3).repeat(None)
  return iter(ds.to_iter_dataset().batch(4, drop_remainder=True))


class _CountingPut:
  def __init__(self):
    self.calls = 0

  def __call__(self, host):
    self.calls += 1
    return jax.device_put(host)


def _consume(prefetcher, n):
  out = []
  for _ in range(n):
    host, device = next(prefetcher)
    np.testing.assert_array_equal(np.asarray(device), host)
    out.append(host)
    prefetcher.fill()
  return out


@pytest.mark.parametrize("size", [0, 1, 2, 3])
def test_same_batches_and_state_as_the_plain_iterator(size):
  plain = _iterator()
  put = _CountingPut()
  prefetcher = DevicePrefetcher(_iterator(), put, size)
  consumed = _consume(prefetcher, 5)
  for batch in consumed:
    np.testing.assert_array_equal(batch, next(plain))
  assert prefetcher.ahead == size and put.calls == 5 + size  # each batch is put once
  assert prefetcher.get_state() == plain.get_state() == {"next_index": 20}
  # The source itself is `size` batches further on: its state alone would skip them on resume.
  assert prefetcher.source.get_state() == {"next_index": 20 + 4 * size}


def test_fill_stops_at_the_limit_and_set_state_drops_what_was_put_ahead():
  prefetcher = DevicePrefetcher(_iterator(), jax.device_put, 2)
  next(prefetcher)
  prefetcher.fill(limit=1)  # one step left: nothing past it is read
  assert prefetcher.ahead == 1 and prefetcher.source.get_state() == {"next_index": 8}
  prefetcher.fill(limit=0)
  assert prefetcher.ahead == 1
  prefetcher.set_state({"next_index": 40})
  assert prefetcher.ahead == 0
  reference = _iterator()
  reference.set_state({"next_index": 40})
  np.testing.assert_array_equal(next(prefetcher)[0], next(reference))


def test_negative_size_names_the_key():
  with pytest.raises(ValueError, match="data.device_prefetch"):
    DevicePrefetcher(_iterator(), jax.device_put, -1)


def test_checkpoint_of_a_prefetcher_resumes_after_the_consumed_batches(tmp_path):
  prefetcher = DevicePrefetcher(_iterator(), jax.device_put, 2)
  _consume(prefetcher, 3)
  manager = ocp.CheckpointManager(tmp_path)
  manager.save(1, args=ocp.args.Composite(data=distributed.DataSave(prefetcher)))
  manager.wait_until_finished()
  plain = _iterator()
  _ = [next(plain) for _ in range(3)]
  expected = next(plain)
  for target in (_iterator(), DevicePrefetcher(_iterator(), jax.device_put, 2)):
    ocp.CheckpointManager(tmp_path).restore(
        1, args=ocp.args.Composite(data=distributed.DataRestore(target)))
    got = next(target)
    np.testing.assert_array_equal(got[0] if isinstance(got, tuple) else got, expected)
