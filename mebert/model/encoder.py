"""The BERT encoder: fused input encodings, a stack of transformer blocks, and the pooler.

Parameter paths mirror Hugging Face's `BertModel` one to one (see mebert.interop for the mapping):
embeddings/{word_embeddings, position_embeddings, token_type_embeddings, LayerNorm},
encoder/layer_<i>/{attention/{self,output}, intermediate, output}, pooler/dense. With
`scan_layers` the layers are one module, encoder/layer, whose parameters gain a leading "layers" axis.
The other families are options of the same modules (mebert.model.config): ELECTRA's narrower
embeddings and their projection (embeddings_project), RoBERTa's position offset, ModernBERT's
pre-LN blocks without biases, GeGLU, two rotary bases and alternating local/global attention.
"""

from __future__ import annotations

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from mebert.model import positions as positions_lib
from mebert.model.attention import ATTENTION_PROBS, SelfAttention
from mebert.model.config import ModelConfig
from mebert.model.dense import Dense
from mebert.model.dropout import Dropout


def dense(cfg: ModelConfig, features: int, axes: tuple[str, str], name: str | None) -> Dense:
  return Dense(
      features, use_bias=cfg.use_bias, dtype=cfg.compute_dtype, param_dtype=cfg.storage_dtype,
      name=name,
      kernel_init=nn.with_logical_partitioning(nn.initializers.normal(cfg.initializer_range), axes),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), axes[1:]))


def layer_norm(cfg: ModelConfig, name: str | None) -> nn.LayerNorm:
  return nn.LayerNorm(
      epsilon=cfg.layer_norm_eps, dtype=cfg.compute_dtype, param_dtype=cfg.storage_dtype, name=name,
      use_bias=cfg.layer_norm_bias,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("embed",)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("embed",)))


def activation(name: str):
  return {"gelu": lambda x: nn.gelu(x, approximate=False),
          "gelu_tanh": lambda x: nn.gelu(x, approximate=True),
          "relu": nn.relu}[name]


# The collection the encoder sows (embeddings output, every layer's output) into as "layers", only
# when a caller makes it mutable: for heads that do not pass return_hidden_states (a task model
# under distillation). A scan exposes the last layer only, as with return_hidden_states.
HIDDEN_STATES = "hidden_states"


def constrain_hidden(x):
  return nn.with_logical_constraint(x, ("batch", "length", "act_embed"))


@flax.struct.dataclass
class EncoderOutputs:
  sequence_output: jax.Array | None  # [B, L, H]; None when BertModel ran pooled_only
  pooled_output: jax.Array | None  # [B, H] or [B, S, H] (packed segments); None without a pooler
  word_embeddings: jax.Array  # [V, E], for the tied MLM decoder (E = embedding_width)
  hidden_states: tuple[jax.Array, ...] | None = None  # embeddings + every layer, when asked
  cls_output: jax.Array | None = None  # the [CLS] rows the pooler reads: [B, H] or [B, S, H]


class Embeddings(nn.Module):
  """Word-piece, segment and position encodings, fused, normalised and dropped out; all
  embedding_width wide (BertModel projects them to hidden_size when that differs)."""

  config: ModelConfig
  deterministic: bool = True

  @nn.compact
  def __call__(self, input_ids, token_type_ids, positions, segment_ids):
    cfg = self.config
    width = cfg.embedding_width
    word = nn.Embed(
        cfg.vocab_size, width, dtype=cfg.compute_dtype, param_dtype=cfg.storage_dtype,
        embedding_init=nn.with_logical_partitioning(
            nn.initializers.normal(cfg.initializer_range), ("vocab", "embed")),
        name="word_embeddings")
    parts = [word(input_ids)]
    position = positions_lib.REGISTRY[cfg.position_encoding](cfg, name="position_embeddings")(
        positions, segment_ids)
    if position.embedding is not None:
      parts.append(position.embedding)
    if cfg.use_segment_embeddings:
      if cfg.type_vocab_size == 1:  # RoBERTa: one row, whatever types a pair's batch carries
        token_type_ids = jnp.zeros_like(token_type_ids)
      parts.append(nn.Embed(
          cfg.type_vocab_size, width, dtype=cfg.compute_dtype,
          param_dtype=cfg.storage_dtype, name="token_type_embeddings",
          embedding_init=nn.with_logical_partitioning(
              nn.initializers.normal(cfg.initializer_range), ("type_vocab", "embed")))(
                  token_type_ids))
    if cfg.encoding_fusion == "sum":
      x = sum(parts[1:], parts[0])
    else:  # concat: each encoding keeps its own subspace until a learned projection mixes them
      x = dense(cfg, width, ("fused_embed", "embed"), "fusion")(
          jnp.concatenate(parts, axis=-1))
    x = layer_norm(cfg, "LayerNorm")(x)
    x = Dropout(cfg.dropout_rate, deterministic=self.deterministic)(x)
    return constrain_hidden(x), position, word.embedding


class Output(nn.Module):
  """Projection, dropout and residual; post-LN adds the LayerNorm (HF: *.output.{dense,LayerNorm})."""

  config: ModelConfig
  in_axis: str
  deterministic: bool = True

  @nn.compact
  def __call__(self, y, residual):
    cfg = self.config
    y = dense(cfg, cfg.hidden_size, (self.in_axis, "embed"), "dense")(y)
    y = Dropout(cfg.dropout_rate, deterministic=self.deterministic)(y) + residual
    if not cfg.pre_layer_norm:
      y = layer_norm(cfg, "LayerNorm")(y)
    return constrain_hidden(y)


class Attention(nn.Module):
  """Self-attention sub-block (HF: layer.attention.{self, output})."""

  config: ModelConfig
  deterministic: bool = True

  @nn.compact
  def __call__(self, x, segment_ids, bias, rotary, query_positions=None, local=False,
               skip_norm=False):
    """skip_norm (a bool, or traced under scan): pre-LN without the LayerNorm (ModernBERT's
    layer 0); the LayerNorm's parameters exist all the same, so every layer has one shape."""
    cfg = self.config
    y = x
    if cfg.pre_layer_norm:
      y = layer_norm(cfg, "pre_LayerNorm")(x)
      if skip_norm is True:
        y = x
      elif skip_norm is not False:
        y = jnp.where(skip_norm, x, y)
    y = SelfAttention(cfg, self.deterministic, name="self")(y, segment_ids, bias, rotary,
                                                            query_positions, local)
    if query_positions is not None:  # only those rows go on (see Layer)
      x = jnp.take_along_axis(x, query_positions[..., None], axis=1)
    return Output(cfg, "joined_kv", self.deterministic, name="output")(y, x)


class Intermediate(nn.Module):
  """The feed-forward expansion (HF: layer.intermediate.dense); GeGLU gates a second half."""

  config: ModelConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    y = layer_norm(cfg, "pre_LayerNorm")(x) if cfg.pre_layer_norm else x
    if cfg.hidden_act == "geglu":
      gate, up = jnp.split(dense(cfg, 2 * cfg.intermediate_size, ("embed", "mlp"), "dense")(y), 2,
                           axis=-1)
      y = nn.gelu(gate, approximate=False) * up
    else:
      y = activation(cfg.hidden_act)(dense(cfg, cfg.intermediate_size, ("embed", "mlp"), "dense")(y))
    return nn.with_logical_constraint(y, ("batch", "length", "mlp"))


def layer_is_local(cfg: ModelConfig, layer_index):
  """The layer's attention pattern: a Python bool for an int index (unrolled layers), a traced
  bool for a traced one (scanned layers), or a Python bool where every layer is alike."""
  if not cfg.has_local_layers:
    return False
  if all(cfg.layer_is_local(i) for i in range(cfg.num_layers)):
    return True
  if isinstance(layer_index, int):
    return cfg.layer_is_local(layer_index)
  return layer_index % cfg.global_attention_every != 0


def _pick(flag, if_true, if_false):
  """if_true where flag (a bool or a traced bool), else if_false; pytrees of arrays."""
  if flag is True or flag is False:
    return if_true if flag else if_false
  return jax.tree.map(lambda a, b: jnp.where(flag, a, b), if_true, if_false)


class Layer(nn.Module):
  """One transformer block: attention then feed-forward, each with its residual."""

  config: ModelConfig
  deterministic: bool = True

  @nn.compact
  def __call__(self, x, segment_ids, bias, rotary, layer_index, query_positions=None):
    """rotary: (global angles, local angles or None), or None. layer_index: an int (unrolled) or
    a traced int (scanned); it decides the layer's attention pattern and rotary base.
    query_positions [B, Q]: the block's output only at those positions, [B, Q, H]; keys and
    values still see every position, so those rows are exactly what the full block computes."""
    cfg = self.config
    local = layer_is_local(cfg, layer_index)
    angles = None
    if rotary is not None:
      global_angles, local_angles = rotary
      angles = global_angles if local_angles is None else _pick(local, local_angles, global_angles)
    skip_norm = False
    if cfg.pre_layer_norm and not cfg.first_layer_attention_norm:
      skip_norm = layer_index == 0
    x = Attention(cfg, self.deterministic, name="attention")(x, segment_ids, bias, angles,
                                                             query_positions, local, skip_norm)
    y = Intermediate(cfg, name="intermediate")(x)
    # Returns (carry, per-step output) so the same module can run under nn.scan.
    return Output(cfg, "mlp", self.deterministic, name="output")(y, x), None


_REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "save_attention_out": jax.checkpoint_policies.save_only_these_names("attention_out"),
}


class Encoder(nn.Module):
  """The layer stack, unrolled (encoder/layer/<i>) or scanned (encoder/layer, stacked)."""

  config: ModelConfig
  deterministic: bool = True

  @nn.compact
  def __call__(self, x, segment_ids, bias, rotary, return_hidden_states: bool = False,
               last_layer_positions=None):
    """last_layer_positions [B, Q] (unrolled layers only): the last layer computes its output at
    those positions only, and the encoder returns [B, Q, H]."""
    cfg = self.config
    block = Layer
    if cfg.remat_policy != "none":
      # Unrolled, the layer index stays a Python int: the attention pattern is then static.
      block = nn.remat(block, policy=_REMAT_POLICIES[cfg.remat_policy],
                       prevent_cse=not cfg.scan_layers, static_argnums=() if cfg.scan_layers else (5,))
    hidden_states = [x]
    if cfg.scan_layers:
      # The layer index is the scanned input: local/global layers differ by data, not by code.
      stack = nn.scan(
          block, variable_axes={"params": 0, ATTENTION_PROBS: 0},
          split_rngs={"params": True, "dropout": True},
          in_axes=(nn.broadcast, nn.broadcast, nn.broadcast, 0), length=cfg.num_layers,
          metadata_params={nn.PARTITION_NAME: "layers"})
      x, _ = stack(cfg, self.deterministic, name="layer")(
          x, segment_ids, bias, rotary, jnp.arange(cfg.num_layers, dtype=jnp.int32))
      hidden_states.append(x)  # a scan does not expose the layers in between
    else:
      for i in range(cfg.num_layers):
        last = i == cfg.num_layers - 1 and last_layer_positions is not None
        x, _ = block(cfg, self.deterministic, name=f"layer_{i}")(
            x, segment_ids, bias, rotary, i, last_layer_positions if last else None)
        hidden_states.append(x)
    if cfg.pre_layer_norm:
      x = layer_norm(cfg, "final_LayerNorm")(x)
      hidden_states[-1] = x
    if self.is_mutable_collection(HIDDEN_STATES) and not self.is_initializing():
      self.sow(HIDDEN_STATES, "layers", tuple(hidden_states))
    return x, tuple(hidden_states) if return_hidden_states else None


def cls_rows(x_BxLxH, cls_positions=None, gathered: bool = False):
  """The [CLS] rows: [B, H], or [B, S, H] at packed rows' cls_positions [B, S]; `gathered`: the
  encoder already returned only those rows."""
  if gathered:
    return x_BxLxH if cls_positions is not None else x_BxLxH[:, 0]
  if cls_positions is None:
    return x_BxLxH[:, 0]
  return jnp.take_along_axis(x_BxLxH, cls_positions[..., None], axis=1)


class Pooler(nn.Module):
  """tanh(W h_[CLS] + b): the sentence vector NSP and classifiers read (HF: pooler.dense)."""

  config: ModelConfig

  @nn.compact
  def __call__(self, first_BxH):
    return jnp.tanh(dense(self.config, self.config.hidden_size, ("embed", "embed_out"), "dense")(
        first_BxH))


@flax.struct.dataclass
class Embedded:
  """What BertModel.embed returns: another model can run its encoder on it (ELECTRA's generator
  shares the discriminator's embeddings)."""
  x: jax.Array  # [B, L, E], before any projection to hidden_size
  position: positions_lib.PositionOutputs
  word_embeddings: jax.Array  # [V, E]


class BertModel(nn.Module):
  """The encoder: what every task head (pretraining, classification, tagging) sits on.

  add_pooling_layer: whether it has BERT's tanh pooler (pooler/dense); heads of the other
  families read the [CLS] rows (`cls_output`) themselves."""

  config: ModelConfig
  deterministic: bool = True
  add_pooling_layer: bool = True

  def setup(self):
    cfg = self.config
    self.embeddings = Embeddings(cfg, self.deterministic)
    if cfg.embedding_width != cfg.hidden_size:  # ELECTRA (HF: electra.embeddings_project)
      self.embeddings_project = dense(cfg, cfg.hidden_size, ("fused_embed", "embed"), None)
    self.encoder = Encoder(cfg, self.deterministic)
    if self.add_pooling_layer:
      self.pooler = Pooler(cfg)

  def _defaults(self, input_ids, token_type_ids, segment_ids, positions):
    if segment_ids is None:
      segment_ids = (input_ids != self.config.pad_token_id).astype(jnp.int32)
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(input_ids.shape[1], dtype=jnp.int32), input_ids.shape)
    return token_type_ids, segment_ids, positions

  def embed(self, input_ids, token_type_ids=None, segment_ids=None, positions=None) -> Embedded:
    token_type_ids, segment_ids, positions = self._defaults(input_ids, token_type_ids, segment_ids,
                                                            positions)
    x, position, word_table = self.embeddings(input_ids, token_type_ids, positions, segment_ids)
    return Embedded(x=x, position=position, word_embeddings=word_table)

  def __call__(self, input_ids, token_type_ids=None, segment_ids=None, positions=None,
               cls_positions=None, return_hidden_states: bool = False,
               pooled_only: bool = False, embedded: Embedded | None = None) -> EncoderOutputs:
    """pooled_only: the caller reads pooled_output / cls_output alone (a sequence classifier), so
    the last layer runs only at the [CLS] rows (most of one layer's work saved; the same
    numbers); sequence_output is then None. Ignored where it does not apply: scanned layers,
    attention biases or rotary angles, or hidden states / attention probabilities asked for.
    embedded: run on these embeddings (another BertModel's `embed`) instead of its own."""
    cfg = self.config
    token_type_ids, segment_ids, positions = self._defaults(input_ids, token_type_ids, segment_ids,
                                                            positions)
    if embedded is None:
      embedded = self.embed(input_ids, token_type_ids, segment_ids, positions)
    x, position = embedded.x, embedded.position
    if cfg.embedding_width != cfg.hidden_size:
      x = constrain_hidden(self.embeddings_project(x))
    cls_only = (pooled_only and not cfg.scan_layers and not return_hidden_states
                and position.attention_bias is None and position.rotary is None
                and not self.is_mutable_collection(HIDDEN_STATES)
                and not self.is_mutable_collection(ATTENTION_PROBS))
    last_layer_positions = None
    if cls_only:
      last_layer_positions = (cls_positions if cls_positions is not None
                              else jnp.zeros((input_ids.shape[0], 1), jnp.int32))
    rotary = None if position.rotary is None else (position.rotary, position.local_rotary)
    x, hidden_states = self.encoder(x, segment_ids, position.attention_bias, rotary,
                                    return_hidden_states, last_layer_positions)
    first = cls_rows(x, cls_positions, gathered=cls_only)
    pooled = self.pooler(first) if self.add_pooling_layer else None
    return EncoderOutputs(sequence_output=None if cls_only else x, pooled_output=pooled,
                          word_embeddings=embedded.word_embeddings, hidden_states=hidden_states,
                          cls_output=first)
