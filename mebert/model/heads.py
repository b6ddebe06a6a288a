"""Task heads of the families beyond BERT, with Hugging Face's layouts (parameters under
"classifier"):

  family      sequence head (first token, or mean with classifier_pooling="mean")      token head
  ----------  ------------------------------------------------------------------------  ----------
  roberta     dropout, dense, tanh, dropout, out_proj (RobertaClassificationHead)        dropout, kernel/bias
  electra     dropout, dense, gelu, dropout, out_proj (ElectraClassificationHead)        dropout, kernel/bias
  modernbert  dense, gelu, LayerNorm, dropout, out_proj (ModernBERT's head + classifier) the same

BERT's head (tanh pooler in the encoder, dropout, classifier) stays in mebert.tasks.model.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from mebert.model.config import ModelConfig
from mebert.model.encoder import EncoderOutputs, activation, dense, layer_norm


def mean_rows(x_BxLxH: jax.Array, segment_ids: jax.Array, cls_positions=None) -> jax.Array:
  """The mean of each sequence's (segment's) real rows: [B, H], or [B, S, H] for packed rows."""
  if cls_positions is None:
    weights = (segment_ids != 0)[:, None, :]  # [B, 1, L]
  else:
    own = jnp.take_along_axis(segment_ids, cls_positions, axis=1)  # [B, S]
    weights = (segment_ids[:, None, :] == own[:, :, None]) & (own != 0)[:, :, None]
  weights = weights.astype(jnp.float32)
  total = jnp.einsum("bsl,blh->bsh", weights, x_BxLxH.astype(jnp.float32))
  mean = total / jnp.maximum(weights.sum(-1, keepdims=True), 1.0)
  return (mean[:, 0] if cls_positions is None else mean).astype(x_BxLxH.dtype)


class FamilyClassifierHead(nn.Module):
  """Logits [B, C] (sequence), [B, S, C] (packed sequences) or [B, L, C] (token_classification),
  float32."""

  config: ModelConfig
  kind: str
  num_outputs: int
  dropout_rate: float
  deterministic: bool = True

  @nn.compact
  def __call__(self, out: EncoderOutputs, segment_ids, cls_positions=None):
    cfg = self.config
    token_task = self.kind == "token_classification"
    drop = lambda x: nn.Dropout(self.dropout_rate, deterministic=self.deterministic)(x)
    kernel_init = nn.with_logical_partitioning(nn.initializers.normal(cfg.initializer_range),
                                               ("embed", "classes"))
    bias_init = nn.with_logical_partitioning(nn.initializers.zeros_init(), ("classes",))

    def out_proj(x):
      return nn.Dense(self.num_outputs, dtype=cfg.compute_dtype, param_dtype=cfg.storage_dtype,
                      name="out_proj", kernel_init=kernel_init, bias_init=bias_init)(x)

    def linear(x):  # the module itself is HF's `classifier`: a bare {kernel, bias}
      kernel = self.param("kernel", kernel_init, (x.shape[-1], self.num_outputs), cfg.storage_dtype)
      bias = self.param("bias", bias_init, (self.num_outputs,), cfg.storage_dtype)
      return x @ kernel.astype(cfg.compute_dtype) + bias.astype(cfg.compute_dtype)

    if token_task:
      x = out.sequence_output
    elif cfg.classifier_pooling == "mean":
      x = mean_rows(out.sequence_output, segment_ids, cls_positions)
    else:
      x = out.cls_output
    if cfg.family == "modernbert":
      x = dense(cfg, cfg.hidden_size, ("embed", "embed_out"), "dense")(x)
      x = layer_norm(cfg, "LayerNorm")(activation("gelu")(x))
      logits = out_proj(drop(x))
    elif token_task:
      logits = linear(drop(x))
    else:  # RoBERTa (tanh) and ELECTRA (gelu)
      x = dense(cfg, cfg.hidden_size, ("embed", "embed_out"), "dense")(drop(x))
      x = jnp.tanh(x) if cfg.family == "roberta" else activation("gelu")(x)
      logits = out_proj(drop(x))
    return logits.astype(jnp.float32)
