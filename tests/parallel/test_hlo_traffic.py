"""HBM traffic read from optimized TPU HLO (mebert.train.hlo_traffic): what the roofline's HBM term
uses instead of XLA's "bytes accessed", which also counts moves into on-chip memory and whole
buffers that a fusion only slices or updates in place."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mebert.parallel import tpu_slices
from mebert.train import hlo_collectives, hlo_traffic

MiB = 2**20
needs_libtpu = pytest.mark.skipif(
    not tpu_slices.libtpu_installed(),
    reason="libtpu (the TPU compiler) is not installed: pip install -r requirements-tpu.txt")

# Trimmed from libtpu's output (layouts dropped where they do not matter): a fori_loop that doubles
# one [1024, 1024] f32 slice of `xs` into a donated buffer per iteration (8 iterations); `w`
# prefetched into on-chip memory (S(1)) and evicted back; a Mosaic kernel whose backend_config
# spans lines; an all-gather after it; a conditional of which one branch runs.
_HLO = (pathlib.Path(__file__).parent / "hlo" / "loop_kernel_conditional.hlo").read_text()


def test_loops_slices_in_place_updates_and_on_chip_copies_from_hlo_text():
  """Per iteration: the 4 MiB slice read and the 4 MiB update written (not the 32 MiB buffers),
  8 iterations; the prefetch reads w's 2 MiB (its on-chip copy is free) and the eviction writes
  them back; tanh reads and writes 2 MiB; the kernel reads 2 and writes 4, the all-gather reads
  and writes 4 each, the conditional's costlier branch 8. Scalars (s32, 4 bytes) count as what
  they are."""
  traffic = hlo_traffic.hbm_traffic(_HLO)
  assert traffic == pytest.approx((8 * (4 + 4) + 2 + 2 + 4 + 6 + 8 + 8) * MiB, abs=1024)


def test_an_instruction_spanning_lines_does_not_end_its_computation():
  """A Mosaic kernel's backend_config has line breaks; the all-gather after it is still found."""
  found, unknown = hlo_collectives.collectives(_HLO, 8)
  assert [(c.kind, c.group_size, c.bytes) for c in found] == [("all-gather", 4, 4 * MiB)]
  assert not unknown


def _one_chip():
  devices = tpu_slices.compile_only_devices(tpu_slices.parse_target("tpu:v5p-8"))
  return NamedSharding(Mesh(np.array(devices[:1]), ("x",)), P())


def _compiled(fn, *shapes, donate=()):
  s = _one_chip()
  args = [jax.ShapeDtypeStruct(shape, dtype, sharding=s) for shape, dtype in shapes]
  return jax.jit(fn, donate_argnums=donate).lower(*args).compile()


@needs_libtpu
def test_a_matmul_reads_its_operands_and_writes_its_result_once():
  """XLA's bytes accessed counts the operand prefetched into on-chip memory again at the copy and
  at its use: 224 MiB where the chip moves 96."""
  c = _compiled(lambda x, w: jnp.tanh(x @ w), ((4096, 4096), jnp.bfloat16),
                ((4096, 4096), jnp.bfloat16))
  assert hlo_traffic.hbm_traffic(c.as_text()) == pytest.approx(3 * 32 * MiB, rel=1e-3)


@needs_libtpu
def test_a_donated_update_reads_three_arrays_and_writes_two():
  def update(p, m, g):
    m = 0.9 * m + 0.1 * g
    return p - 0.01 * m, m

  c = _compiled(update, *[((4096, 4096), jnp.float32)] * 3, donate=(0, 1))
  assert hlo_traffic.hbm_traffic(c.as_text()) == pytest.approx(5 * 64 * MiB, rel=1e-3)


@needs_libtpu
def test_scanned_layers_read_their_own_slice_of_the_stacked_weights_each_iteration():
  """The layer's weights reach the matmul through a nested fusion that slices the stack: counting
  the whole stack per iteration would make the traffic grow with the square of the depth."""

  def stack(layers):
    def forward(ws, x):
      return jax.lax.scan(lambda h, w: (jnp.tanh(h @ w), None), x, ws)[0]

    c = _compiled(forward, ((layers, 1024, 1024), jnp.float32), ((1024, 1024), jnp.float32))
    return hlo_traffic.hbm_traffic(c.as_text())

  t8, t16, t24 = stack(8), stack(16), stack(24)
  assert t24 - t16 == pytest.approx(t16 - t8, rel=1e-3)
  # Per layer at least its weights (read as f32, converted to bf16 and read back) and the
  # activations read and written; not the whole stack.
  assert 8 * (4 + 2 + 2 + 4 + 4) * MiB <= t16 - t8 < 8 * 2 * 16 * MiB
