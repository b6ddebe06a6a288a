"""BERT for pretraining: the encoder plus the masked-LM and next-sentence heads.

Hugging Face `BertForPreTraining` paths: bert/..., cls/predictions/{transform/{dense, LayerNorm},
bias} with the decoder tied to bert/embeddings/word_embeddings, and cls/seq_relationship.
The MLM head runs only at the masked positions it is given (google-research/bert's
max_predictions_per_seq gather): at 15% masking that skips ~85% of the vocabulary projection.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from mebert.model.config import ModelConfig
from mebert.model.encoder import BertModel, activation, dense, layer_norm


@jax.custom_vjp
def tied_decoder(x_BxPxH: jax.Array, table_VxH: jax.Array, bias_V: jax.Array) -> jax.Array:
  """float32 logits x @ table.T + bias, with the backward pass spelled out (tied_decoder_bwd)."""
  return (jnp.einsum("...h,vh->...v", x_BxPxH, table_VxH, preferred_element_type=jnp.float32)
          + bias_V.astype(jnp.float32))


def tied_decoder_fwd(x, table, bias):
  return tied_decoder(x, table, bias), (x, table, bias)


def tied_decoder_bwd(residuals, g_BxPxV):
  """The gradients autodiff gives, except that the bias's is a product with a vector of ones:
  XLA:CPU sums [B*P, V] over its leading axis (a strided reduction) several times slower than it
  multiplies, and at bert-mini sizes that sum alone took ~4% of a training step."""
  x, table, bias = residuals
  g = g_BxPxV.reshape(-1, g_BxPxV.shape[-1])
  x2 = x.reshape(-1, x.shape[-1])
  dx = jnp.einsum("pv,vh->ph", g, table, preferred_element_type=jnp.float32)
  dtable = jnp.einsum("pv,ph->vh", g, x2, preferred_element_type=jnp.float32)
  dbias = jnp.einsum("p,pv->v", jnp.ones(g.shape[:1], g.dtype), g)
  return (dx.reshape(x.shape).astype(x.dtype), dtable.astype(table.dtype),
          dbias.astype(bias.dtype))


tied_decoder.defvjp(tied_decoder_fwd, tied_decoder_bwd)


def gather_positions(x_BxLxH: jax.Array, positions_BxP: jax.Array) -> jax.Array:
  return jnp.take_along_axis(x_BxLxH, positions_BxP[..., None].astype(jnp.int32), axis=1)


class PredictionHeadTransform(nn.Module):
  """dense (hidden -> embedding width), activation, LayerNorm: BERT's cls.predictions.transform,
  RoBERTa's lm_head.{dense,layer_norm}, ELECTRA's generator_predictions, ModernBERT's head."""

  config: ModelConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    # BERT's head uses hidden_act; RoBERTa, ELECTRA and ModernBERT (and GeGLU blocks) use GELU.
    act = cfg.hidden_act if cfg.family == "bert" and cfg.hidden_act != "geglu" else "gelu"
    x = activation(act)(dense(cfg, cfg.embedding_width, ("embed", "embed_out"), "dense")(x))
    return layer_norm(cfg, "LayerNorm")(x)


class MaskedLMHead(nn.Module):
  """transform -> tied decoder (x @ word_embeddings.T) + bias; logits in float32."""

  config: ModelConfig

  @nn.compact
  def __call__(self, x, word_embeddings_VxH):
    cfg = self.config
    x = PredictionHeadTransform(cfg, name="transform")(x)
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(), ("vocab",)),
                      (cfg.vocab_size,), cfg.storage_dtype)
    return tied_decoder(x, word_embeddings_VxH.astype(cfg.compute_dtype), bias)


class BertForPreTraining(nn.Module):
  """Returns {"mlm_logits": [B, P, V] (or [B, L, V] without positions), "nsp_logits": [B, 2]}.

  Packed rows (mebert.data.packing) pass cls_positions [B, S], the row position of each example's
  [CLS]: the pooler and NSP head then run at each of them, and nsp_logits is [B, S, 2].
  Only BERT has the pooler and NSP head: the other families (RoBERTa, ModernBERT) pretrain with
  the masked LM alone and return no "nsp_logits"."""

  config: ModelConfig
  deterministic: bool = True

  @nn.compact
  def __call__(self, input_ids, token_type_ids=None, segment_ids=None, positions=None,
               masked_lm_positions=None, cls_positions=None):
    cfg = self.config
    nsp = cfg.family == "bert"
    out = BertModel(cfg, self.deterministic, add_pooling_layer=nsp, name="bert")(
        input_ids, token_type_ids, segment_ids, positions, cls_positions)
    x = out.sequence_output
    if masked_lm_positions is not None:
      x = gather_positions(x, masked_lm_positions)
    heads = PreTrainingHeads(cfg, name="cls")
    mlm_logits, nsp_logits = heads(x, out.pooled_output, out.word_embeddings)
    if not nsp:
      return {"mlm_logits": mlm_logits}
    return {"mlm_logits": mlm_logits, "nsp_logits": nsp_logits}


class PreTrainingHeads(nn.Module):
  """The masked-LM head (cls/predictions) and, given a pooled vector, the NSP head."""

  config: ModelConfig

  @nn.compact
  def __call__(self, masked_hidden, pooled, word_embeddings):
    cfg = self.config
    mlm_logits = MaskedLMHead(cfg, name="predictions")(masked_hidden, word_embeddings)
    if pooled is None:
      return mlm_logits, None
    nsp_logits = nn.Dense(
        2, dtype=cfg.compute_dtype, param_dtype=cfg.storage_dtype, name="seq_relationship",
        kernel_init=nn.with_logical_partitioning(
            nn.initializers.normal(cfg.initializer_range), ("embed", "classes")),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("classes",)))(pooled)
    return mlm_logits, nsp_logits.astype(jnp.float32)
