"""The model's hyperparameters, typed and frozen at the module boundary.

Configs (ml_collections) are loose and overridable; modules get this frozen dataclass instead, so a
typo or a bad value fails once, here, with a message that names the key.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "geglu")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch", "save_attention_out")
ATTENTION_BACKENDS = ("auto", "xla", "dot_product", "cudnn", "splash")
# The published architecture a model follows: decides the task heads (BERT's tanh pooler and
# classifier, RoBERTa's and ELECTRA's dense+out_proj on the first token, ModernBERT's
# dense+act+norm head), whether the encoder has a pooler, and the Hugging Face classes on export.
FAMILIES = ("bert", "roberta", "electra", "modernbert")
CLASSIFIER_POOLINGS = ("cls", "mean")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """BERT hyperparameters; defaults are bert-base-uncased, names follow Hugging Face's BertConfig."""

  vocab_size: int = 30522
  hidden_size: int = 768
  num_layers: int = 12
  num_heads: int = 12
  intermediate_size: int = 3072
  hidden_act: str = "gelu"  # exact erf GELU, as BERT and Hugging Face use
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  dropout_rate: float = 0.1  # hidden_dropout_prob
  attention_dropout_rate: float = 0.1
  layer_norm_eps: float = 1e-12
  initializer_range: float = 0.02
  pad_token_id: int = 0
  # Encodings: which position encoding (mebert.model.positions registry), segment embeddings, fusion.
  position_encoding: str = "learned"
  use_segment_embeddings: bool = True
  encoding_fusion: str = "sum"  # "sum" (BERT) or "concat" (concatenate, then project to hidden)
  # Block variant: BERT is post-LN with biases.
  pre_layer_norm: bool = False
  use_bias: bool = True
  # Numerics and memory: compute dtype apart from parameter storage dtype. dtype "auto": bfloat16
  # on TPU and GPU, float32 on CPU (for_platform; the trainer resolves it from its mesh's devices).
  dtype: str = "float32"
  param_dtype: str = "float32"
  scan_layers: bool = False  # one compiled layer body for all layers: faster compiles for deep models
  remat_policy: str = "none"
  attention_backend: str = "auto"  # "auto" picks by platform at trace time
  # Families beyond BERT (see FAMILIES and docs/families.md).
  family: str = "bert"
  embedding_size: int = 0  # 0 = hidden_size; ELECTRA: a narrower [V, E] table, projected to hidden
  position_offset: int = 0  # learned positions read row position + offset (RoBERTa: pad id + 1)
  layer_norm_bias: bool = True  # ModernBERT's LayerNorms have no bias
  rotary_base: float = 10000.0  # RoPE base of global-attention layers
  local_rotary_base: float = 0.0  # RoPE base of local layers; 0 = rotary_base (ModernBERT: 1e4/1.6e5)
  # Sliding-window attention (ModernBERT's semantics): in a local layer a query at i attends keys j
  # with |i - j| <= local_attention_window // 2 (and of its own segment). 0 = global everywhere.
  local_attention_window: int = 0
  # Layer l is global when l % global_attention_every == 0, local otherwise (ModernBERT: 3);
  # 0 = every layer local.
  global_attention_every: int = 1
  # Pre-LN only: False skips layer 0's attention LayerNorm (ModernBERT: the embeddings are already
  # normalised there).
  first_layer_attention_norm: bool = True
  classifier_pooling: str = "cls"  # sequence heads read the first token, or ("mean") all tokens

  def __post_init__(self):
    def fail(key, why):
      raise ValueError(f"model config: {key}={getattr(self, key)!r} {why}")

    for key in ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
                "max_position_embeddings"):
      if not isinstance(getattr(self, key), int) or getattr(self, key) <= 0:
        fail(key, "must be a positive integer")
    if self.hidden_size % self.num_heads:
      fail("hidden_size", f"is not divisible by num_heads={self.num_heads}")
    if self.hidden_act not in ACTIVATIONS:
      fail("hidden_act", f"is not one of {ACTIVATIONS}")
    if self.dtype not in _DTYPES and self.dtype != "auto":
      fail("dtype", f"is not one of {tuple(_DTYPES) + ('auto',)}")
    if self.param_dtype not in _DTYPES:
      fail("param_dtype", f"is not one of {tuple(_DTYPES)}")
    if self.remat_policy not in REMAT_POLICIES:
      fail("remat_policy", f"is not one of {REMAT_POLICIES}")
    if self.attention_backend not in ATTENTION_BACKENDS:
      fail("attention_backend", f"is not one of {ATTENTION_BACKENDS}")
    if self.encoding_fusion not in ("sum", "concat"):
      fail("encoding_fusion", "is not one of ('sum', 'concat')")
    if self.family not in FAMILIES:
      fail("family", f"is not one of {FAMILIES}")
    if self.classifier_pooling not in CLASSIFIER_POOLINGS:
      fail("classifier_pooling", f"is not one of {CLASSIFIER_POOLINGS}")
    for key in ("embedding_size", "position_offset", "local_attention_window",
                "global_attention_every"):
      if not isinstance(getattr(self, key), int) or getattr(self, key) < 0:
        fail(key, "must be a non-negative integer")
    if not self.rotary_base > 1:
      fail("rotary_base", "must be above 1")
    if self.local_rotary_base and not self.local_rotary_base > 1:
      fail("local_rotary_base", "must be 0 (= rotary_base) or above 1")
    if not self.pre_layer_norm and not self.first_layer_attention_norm:
      fail("first_layer_attention_norm", "can be False only with pre_layer_norm=True")
    for key in ("dropout_rate", "attention_dropout_rate"):
      if not 0.0 <= getattr(self, key) < 1.0:
        fail(key, "must be in [0, 1)")
    from mebert.model import positions  # local import: positions imports this module

    if self.position_encoding not in positions.REGISTRY:
      fail("position_encoding", f"is not one of {tuple(sorted(positions.REGISTRY))}")

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def embedding_width(self) -> int:
    """The width of the token embeddings: embedding_size, or hidden_size when that is 0."""
    return self.embedding_size or self.hidden_size

  @property
  def half_window(self) -> int:
    """How far a local layer's query sees on each side: local_attention_window // 2."""
    return self.local_attention_window // 2

  def layer_is_local(self, layer: int) -> bool:
    """Whether layer `layer` uses sliding-window attention (see global_attention_every)."""
    if not self.local_attention_window:
      return False
    return self.global_attention_every == 0 or layer % self.global_attention_every != 0

  @property
  def has_local_layers(self) -> bool:
    return any(self.layer_is_local(i) for i in range(self.num_layers))

  @property
  def compute_dtype(self) -> Any:
    if self.dtype == "auto":  # outside the trainer: this process's default devices decide
      import jax

      return _DTYPES[auto_dtype(jax.devices()[0].platform)]
    return _DTYPES[self.dtype]

  def for_platform(self, platform: str) -> "ModelConfig":
    """dtype "auto" made concrete for the devices the model will run on ("tpu", "gpu", "cpu")."""
    return self.replace(dtype=auto_dtype(platform)) if self.dtype == "auto" else self

  @property
  def storage_dtype(self) -> Any:
    return _DTYPES[self.param_dtype]

  def replace(self, **changes) -> "ModelConfig":
    return dataclasses.replace(self, **changes)

  @classmethod
  def from_dict(cls, values, *, vocab_size: int | None = None) -> "ModelConfig":
    """Builds from a ConfigDict/dict; unknown keys are an error that names them."""
    values = dict(values.to_dict() if hasattr(values, "to_dict") else values)
    if vocab_size is not None and not values.get("vocab_size"):
      values["vocab_size"] = vocab_size
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
      raise ValueError(f"model config: unknown key(s) {unknown}; known keys: {sorted(known)}")
    return cls(**values)


def auto_dtype(platform: str) -> str:
  """bfloat16 where the matrix units run it at full rate (TPU MXUs, GPU tensor cores); float32 on
  CPU, where bfloat16 matmuls are emulated and slower."""
  return "bfloat16" if platform in ("tpu", "gpu") else "float32"


def bert_size(name: str) -> dict:
  """The published BERT sizes (Turc et al. 2019 for the small ones) as ModelConfig keyword args."""
  sizes = {
      "tiny": dict(hidden_size=128, num_layers=2, num_heads=2, intermediate_size=512),
      "mini": dict(hidden_size=256, num_layers=4, num_heads=4, intermediate_size=1024),
      "small": dict(hidden_size=512, num_layers=4, num_heads=8, intermediate_size=2048),
      "medium": dict(hidden_size=512, num_layers=8, num_heads=8, intermediate_size=2048),
      "base": dict(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072),
      "large": dict(hidden_size=1024, num_layers=24, num_heads=16, intermediate_size=4096),
  }
  if name not in sizes:
    raise ValueError(f"unknown BERT size {name!r}; known: {sorted(sizes)}")
  return sizes[name]
