"""mebert's Dense: nn.Dense's parameters and outputs, and a weight gradient without a transposed
copy of the incoming gradient on XLA:CPU (the reason it exists)."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mebert.model.dense import Dense

B, S, H, F = 4, 32, 16, 48


def _modules():
  init = nn.with_logical_partitioning(nn.initializers.normal(0.5), ("embed", "mlp"))
  bias = nn.with_logical_partitioning(nn.initializers.normal(0.5), ("mlp",))
  return Dense(F, kernel_init=init, bias_init=bias), nn.Dense(F, kernel_init=init, bias_init=bias)


def test_same_parameters_and_outputs_as_nn_dense_on_3d_inputs():
  ours, flax_dense = _modules()
  x = jax.random.normal(jax.random.key(1), (B, S, H))
  params = ours.init(jax.random.key(0), x)
  reference = flax_dense.init(jax.random.key(0), x)
  assert jax.tree.structure(params) == jax.tree.structure(reference)
  assert params["params"]["kernel"].names == ("embed", "mlp")
  np.testing.assert_array_equal(ours.apply(params, x), flax_dense.apply(params, x))
  assert ours.apply(params, x).shape == (B, S, F)
  assert ours.apply(params, x[0, 0]).shape == (F,)  # a single vector works too


def test_weight_gradient_reads_the_incoming_gradient_without_a_transposed_copy():
  ours, _ = _modules()
  x = jax.random.normal(jax.random.key(1), (B, S, H))
  params = nn.unbox(ours.init(jax.random.key(0), x))

  def loss(params, x):
    return jnp.sum(jnp.tanh(ours.apply(params, x)) ** 2)

  hlo = jax.jit(jax.grad(loss)).lower(params, x).compile().as_text()
  entry = hlo[hlo.index("ENTRY"):]
  transposed = [line for line in entry.splitlines()
                if re.search(rf"= f32\[{F},{B * S}\]", line)]  # dy^T, laid out for the dot
  assert not transposed, transposed
  grads = jax.jit(jax.grad(loss))(params, x)
  reference = jax.grad(lambda p: jnp.sum(jnp.tanh(
      jnp.einsum("bsh,hf->bsf", x, p["params"]["kernel"]) + p["params"]["bias"]) ** 2))(params)
  np.testing.assert_allclose(grads["params"]["kernel"], reference["params"]["kernel"], rtol=1e-5,
                             atol=1e-5)


def test_rows_with_the_kernels_shape_keep_the_input_shape_and_the_same_outputs():
  """32 rows of 32 features into 32 would look like the kernel to qwix's QAT: plain nn.Dense."""
  init = nn.initializers.normal(0.5)
  ours, flax_dense = Dense(32, kernel_init=init), nn.Dense(32, kernel_init=init)
  x = jax.random.normal(jax.random.key(1), (2, 16, 32))
  params = ours.init(jax.random.key(0), x)
  np.testing.assert_array_equal(ours.apply(params, x), flax_dense.apply(params, x))
