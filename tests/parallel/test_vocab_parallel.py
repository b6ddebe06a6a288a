"""The shard_map vocabulary-parallel cross-entropy equals the plain log_softmax one: values,
accuracy and gradients, on a 2x2x2 mesh with the logits split over the vocabulary."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

import parallel_helpers as H
from mebert.parallel.vocab_parallel import cross_entropy_reference, vocab_parallel_cross_entropy


def _inputs(batch=8, preds=5, vocab=64, seed=0):
  rng = np.random.default_rng(seed)
  logits = (4.0 * rng.standard_normal((batch, preds, vocab))).astype(np.float32)
  targets = rng.integers(0, vocab, (batch, preds)).astype(np.int32)
  logits[0, 0], logits[1, 0, 40] = 1.0, 50.0  # a full tie, a sure prediction
  targets[0, 0], targets[1, 0], targets[2, 0] = 0, 40, vocab - 1  # first and last shard
  weights = rng.random((batch, preds)).astype(np.float32)
  return logits, targets, weights


def _loss(fn, logits, targets, weights, **kwargs):
  ce, correct = fn(logits, targets, **kwargs)
  return jnp.sum(ce * weights) / jnp.sum(weights), (ce, correct)


def test_equals_plain_cross_entropy_values_and_gradients():
  mesh = H.make_mesh((2, 2, 2))
  logits, targets, weights = _inputs()
  grad_fn = lambda fn, **kw: jax.jit(jax.value_and_grad(
      lambda l: _loss(fn, l, targets, weights, **kw), has_aux=True))
  (ref_loss, (ref_ce, ref_correct)), ref_grad = grad_fn(cross_entropy_reference)(logits)

  sharded = jax.device_put(logits, NamedSharding(mesh, P(("data", "fsdp"), None, "tensor")))
  for kwargs in ({"mesh": mesh}, {}):  # explicit mesh, and the one set with jax.set_mesh
    with jax.set_mesh(mesh):
      (loss, (ce, correct)), grad = grad_fn(vocab_parallel_cross_entropy, **kwargs)(sharded)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    np.testing.assert_allclose(ce, ref_ce, atol=1e-5, rtol=1e-6)
    np.testing.assert_array_equal(correct, ref_correct)
    np.testing.assert_allclose(grad, ref_grad, atol=1e-7)
    assert grad.sharding.spec == P(("data", "fsdp"), None, "tensor")
  assert float(ref_correct[1, 0]) == 1.0 and float(ref_correct[0, 0]) == 1.0  # tie -> index 0


def test_runs_on_the_local_vocabulary_slice_without_gathering_logits():
  mesh = H.make_mesh((2, 2, 2))
  logits, targets, weights = _inputs()
  sharded = jax.device_put(logits, NamedSharding(mesh, P(("data", "fsdp"), None, "tensor")))
  seen = []

  def spy(x):
    seen.append(x.shape)
    return x

  import mebert.parallel.vocab_parallel as vp

  original = vp._local_cross_entropy
  vp._local_cross_entropy = lambda l, t, **kw: original(spy(l), t, **kw)
  try:
    hlo = jax.jit(jax.grad(lambda l: _loss(vocab_parallel_cross_entropy, l, targets, weights,
                                           mesh=mesh)[0])).lower(sharded).compile().as_text()
  finally:
    vp._local_cross_entropy = original
  assert seen == [(2, 5, 32)]  # each device: a quarter of the rows, half of the vocabulary
  assert "all-gather" not in hlo  # only [B, P]-sized all-reduces cross the tensor axis


def test_falls_back_where_the_vocabulary_does_not_split():
  mesh = H.make_mesh((2, 2, 2))
  logits, targets, _ = _inputs(vocab=63)
  ce, correct = jax.jit(lambda l, t: vocab_parallel_cross_entropy(l, t, mesh=mesh))(logits, targets)
  ref_ce, ref_correct = jax.jit(cross_entropy_reference)(logits, targets)
  np.testing.assert_allclose(ce, ref_ce, rtol=1e-6)
  np.testing.assert_array_equal(correct, ref_correct)
