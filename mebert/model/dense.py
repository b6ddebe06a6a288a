"""The Dense layer of the encoder's projections: flax's nn.Dense applied to a 2-D view of its input.

A Dense over [batch, length, features] activations is a dot_general whose weight gradient
contracts two axes (dW = x^T dy over batch and length). XLA:CPU gives that dot a transposed copy of
dy in memory: per step of bert-mini at 32 x 128, a 16 MB strided copy for each feed-forward
expansion and a 4 MB one for every other projection, some recomputing the fusion that made dy. On
the [batch * length, features] view the same dot reads dy as it lies. On GPU and TPU the view is
what XLA's dot canonicalisation builds anyway. Parameters, their names and their logical axes are
nn.Dense's, so checkpoints and Hugging Face mappings do not change.
"""

from __future__ import annotations

import flax.linen as nn


class Dense(nn.Dense):
  """nn.Dense on inputs [..., in_features] seen as rows [N, in_features].

  Except when the rows would have the kernel's own shape (N == in_features == features): qwix's
  quantization-aware training tells a weight from an activation by its shape, so there the input
  keeps its shape and the layer is plain nn.Dense."""

  def __call__(self, inputs):
    rows = inputs.reshape(-1, inputs.shape[-1])
    if rows.shape == (inputs.shape[-1], self.features) or inputs.ndim == 2:
      return super().__call__(inputs)
    return super().__call__(rows).reshape(*inputs.shape[:-1], self.features)
