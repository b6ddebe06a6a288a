"""ELECTRA (Clark et al. 2020): a small masked-LM generator and a discriminator trained together.

The generator fills the masked positions with tokens sampled from its own softmax (no gradient
flows through the sampling); the discriminator reads the corrupted sequence and predicts, at every
real token, whether it was replaced. Both share the token, position and type embeddings (and
their LayerNorm): the generator runs on the discriminator's embeddings, projected to its own
width when the two differ (ELECTRA's embeddings_project), and its MLM decoder is tied to the same
table. The discriminator is an ordinary encoder under "bert" (HF: ElectraForPreTraining's
electra.*): it fine-tunes and exports like any other.

Parameters: bert/ (discriminator: embeddings, embeddings_project when E != H, encoder),
generator/ (its encoder, and projection), cls/predictions (the generator's MLM head, HF:
generator_predictions + generator_lm_head), discriminator_predictions/{dense, dense_prediction}.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from mebert.model.config import ModelConfig
from mebert.model.encoder import BertModel, activation, dense
from mebert.model.pretraining import PreTrainingHeads, gather_positions


@dataclasses.dataclass(frozen=True)
class ElectraConfig:
  """The objective's settings (config.electra); the generator's shape follows the discriminator's
  as in google-research/electra's get_generator_config."""

  generator_size: float = 0.25  # generator hidden width / discriminator's (paper: 1/4 to 1/2)
  generator_layers: float = 1.0  # generator layers / discriminator's
  rtd_weight: float = 50.0  # lambda: the discriminator loss's weight against the generator's MLM
  mlm_weight: float = 1.0
  temperature: float = 1.0  # of the generator's softmax when sampling replacements

  def __post_init__(self):
    for key in ("generator_size", "generator_layers", "rtd_weight", "temperature"):
      if not getattr(self, key) > 0:
        raise ValueError(f"electra config: {key}={getattr(self, key)!r} must be positive")
    if self.mlm_weight < 0:
      raise ValueError(f"electra config: mlm_weight={self.mlm_weight!r} must be >= 0")

  @classmethod
  def from_dict(cls, values) -> "ElectraConfig":
    values = dict(values.to_dict() if hasattr(values, "to_dict") else (values or {}))
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
      raise ValueError(f"electra config: unknown key(s) {unknown}; known keys: {sorted(known)}")
    return cls(**values)

  def generator_config(self, disc: ModelConfig) -> ModelConfig:
    """Hidden = size * the discriminator's, heads = hidden / 64 (at least 1), intermediate =
    4 * hidden, layers = generator_layers * the discriminator's; embeddings are shared, so their
    width stays the discriminator's."""
    hidden = int(round(disc.hidden_size * self.generator_size))
    heads = max(1, hidden // 64)
    while hidden % heads:
      heads -= 1
    return disc.replace(
        hidden_size=hidden, num_heads=heads, intermediate_size=4 * hidden,
        num_layers=max(1, int(round(disc.num_layers * self.generator_layers))),
        embedding_size=disc.embedding_width)


class DiscriminatorHead(nn.Module):
  """dense, activation, dense_prediction -> one logit per token [B, L] (HF:
  discriminator_predictions)."""

  config: ModelConfig

  @nn.compact
  def __call__(self, x_BxLxH):
    cfg = self.config
    act = "gelu" if cfg.hidden_act == "geglu" else cfg.hidden_act
    x = activation(act)(dense(cfg, cfg.hidden_size, ("embed", "embed_out"), "dense")(x_BxLxH))
    logits = dense(cfg, 1, ("embed_out", "classes"), "dense_prediction")(x)
    return logits[..., 0].astype(jnp.float32)


def scatter_positions(ids_BxL, positions_BxP, values_BxP, weights_BxP):
  """ids with values written at the positions whose weight is > 0 (unused prediction slots point
  at position 0 with weight 0 and must leave it alone); returns (ids, written [B, L] bool)."""
  length = ids_BxL.shape[1]
  hit = ((positions_BxP[..., None] == jnp.arange(length, dtype=positions_BxP.dtype))
         & (weights_BxP > 0)[..., None])  # [B, P, L]; a position is masked at most once
  written = hit.any(axis=1)
  value = jnp.sum(jnp.where(hit, values_BxP[..., None], 0), axis=1)
  return jnp.where(written, value, ids_BxL).astype(ids_BxL.dtype), written


class ElectraForPreTraining(nn.Module):
  """Generator MLM on the masked input, sampled replacements, discriminator on the result.

  Returns {"mlm_logits": [B, P, V] (the generator's, at masked_lm_positions), "rtd_logits": [B, L],
  "rtd_labels": [B, L] float32 (1 = replaced)}. Draws from the "sample" RNG stream (and
  "dropout" when not deterministic)."""

  config: ModelConfig  # the discriminator
  electra: ElectraConfig = ElectraConfig()
  deterministic: bool = True

  @nn.compact
  def __call__(self, input_ids, token_type_ids=None, segment_ids=None, positions=None,
               masked_lm_positions=None, masked_lm_ids=None, masked_lm_weights=None,
               cls_positions=None):
    del cls_positions  # no sentence-level head in ELECTRA's pretraining
    cfg = self.config
    gen_cfg = self.electra.generator_config(cfg)
    disc = BertModel(cfg, self.deterministic, add_pooling_layer=False, name="bert")
    gen = BertModel(gen_cfg, self.deterministic, add_pooling_layer=False, name="generator")
    if segment_ids is None:
      segment_ids = (input_ids != cfg.pad_token_id).astype(jnp.int32)
    if masked_lm_positions is None:
      masked_lm_positions = jnp.zeros((input_ids.shape[0], 1), jnp.int32)
    embedded = disc.embed(input_ids, token_type_ids, segment_ids, positions)
    hidden = gen(input_ids, token_type_ids, segment_ids, positions,
                 embedded=embedded).sequence_output
    mlm_logits, _ = PreTrainingHeads(gen_cfg, name="cls")(
        gather_positions(hidden, masked_lm_positions), None, embedded.word_embeddings)

    if masked_lm_ids is None:  # initialisation: a stand-in corruption, the same shapes
      masked_lm_ids = jnp.zeros(masked_lm_positions.shape, jnp.int32)
    if masked_lm_weights is None:
      masked_lm_weights = jnp.ones(masked_lm_positions.shape, jnp.float32)
    logits = jax.lax.stop_gradient(mlm_logits) / self.electra.temperature
    sampled = jax.random.categorical(self.make_rng("sample"), logits, axis=-1)  # gumbel-max
    original, _ = scatter_positions(input_ids, masked_lm_positions, masked_lm_ids,
                                    masked_lm_weights)
    corrupted, _ = scatter_positions(input_ids, masked_lm_positions, sampled, masked_lm_weights)
    labels = ((corrupted != original) & (segment_ids != 0)).astype(jnp.float32)

    sequence = disc(corrupted, token_type_ids, segment_ids, positions).sequence_output
    rtd_logits = DiscriminatorHead(cfg, name="discriminator_predictions")(sequence)
    return {"mlm_logits": mlm_logits, "rtd_logits": rtd_logits, "rtd_labels": labels}
