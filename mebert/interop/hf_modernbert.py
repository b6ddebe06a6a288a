"""ModernBERT (Warner et al. 2024; transformers' ModernBertModel) <-> mebert.

ModernBERT is mebert's pre-LN block with GeGLU, no biases (nor LayerNorm biases), rotary
positions, no token types, a LayerNorm on the embeddings, none before layer 0's attention (the
embeddings are already normalised: first_layer_attention_norm=False), a final LayerNorm, and global
attention every third layer with a 128-token sliding window (|i - j| <= 64) elsewhere, each kind
with its own rotary base (160k global, 10k local). Its tensors differ in three ways handled here:
  - Wqkv [3H, H] holds query, key and value (in that order, heads-major): three mebert Dense.
  - its RoPE rotates halves (x[i], x[i + D/2]) where mebert rotates pairs (x[2i], x[2i + 1]):
    the query and key rows are permuted per head, which leaves q . k unchanged.
  - Wi [2I, H] is [input; gate] with act(input) * gate: mebert's GeGLU splits the same way.
The MLM head is head.{dense,norm} + decoder (tied weight, own bias); the sequence classifier is a
second head.{dense,norm} (here classifier/{dense,LayerNorm}) + classifier (classifier/out_proj).
"""

from __future__ import annotations

import numpy as np

from mebert.interop.errors import InteropError
from mebert.interop.hf_names import Entry, dense, layer_norm
from mebert.model.config import ModelConfig

_ROPE_DEFAULTS = {"full_attention": 160_000.0, "sliding_attention": 10_000.0}


def entries(cfg: ModelConfig, num_labels, task_kind):
  del task_kind  # ModernBERT's sequence and token heads have one layout
  h, i, bias, norm_bias = cfg.hidden_size, cfg.intermediate_size, cfg.use_bias, cfg.layer_norm_bias
  emb = ("bert", "embeddings")
  yield Entry(emb + ("word_embeddings", "embedding"), "model.embeddings.tok_embeddings.weight",
              False, "embeddings", (cfg.vocab_size, h))
  yield from layer_norm(emb + ("LayerNorm",), "model.embeddings.norm", "embeddings", h, norm_bias)
  for n in range(cfg.num_layers):
    p, k = ("bert", "encoder", f"layer_{n}"), f"model.layers.{n}"
    if n > 0 or cfg.first_layer_attention_norm:
      yield from layer_norm(p + ("attention", "pre_LayerNorm"), f"{k}.attn_norm", "layer", h,
                            norm_bias)
    for j, name in enumerate(("query", "key", "value")):
      rotary = cfg.num_heads if name != "value" else 0
      path = p + ("attention", "self", name)
      yield Entry(path + ("kernel",), f"{k}.attn.Wqkv.weight", True, "layer", (h, h), (j, 3),
                  rotary)
      if bias:
        yield Entry(path + ("bias",), f"{k}.attn.Wqkv.bias", False, "layer", (h,), (j, 3), rotary)
    yield from dense(p + ("attention", "output", "dense"), f"{k}.attn.Wo", "layer", (h, h), bias)
    yield from layer_norm(p + ("intermediate", "pre_LayerNorm"), f"{k}.mlp_norm", "layer", h,
                          norm_bias)
    yield from dense(p + ("intermediate", "dense"), f"{k}.mlp.Wi", "layer", (h, 2 * i), bias)
    yield from dense(p + ("output", "dense"), f"{k}.mlp.Wo", "layer", (i, h), bias)
  yield from layer_norm(("bert", "encoder", "final_LayerNorm"), "model.final_norm", "layer", h,
                        norm_bias)
  if num_labels is None:  # ModernBertForMaskedLM's head
    yield from dense(("cls", "predictions", "transform", "dense"), "head.dense", "mlm", (h, h), bias)
    yield from layer_norm(("cls", "predictions", "transform", "LayerNorm"), "head.norm", "mlm", h,
                          norm_bias)
    yield Entry(("cls", "predictions", "bias"), "decoder.bias", False, "mlm", (cfg.vocab_size,))
  else:  # the classification models' head (same HF names, another mebert place)
    yield from dense(("classifier", "dense"), "head.dense", "classifier", (h, h), bias)
    yield from layer_norm(("classifier", "LayerNorm"), "head.norm", "classifier", h, norm_bias)
    yield from dense(("classifier", "out_proj"), "classifier", "classifier", (h, num_labels))


def extra_params(cfg: ModelConfig) -> dict:
  """Layer 0's attention LayerNorm: mebert keeps one in every layer (one shape for a scan) and
  skips it in layer 0; HF has none. Filled as the identity."""
  if cfg.first_layer_attention_norm:
    return {}
  path = ("bert", "encoder", "layer_0", "attention", "pre_LayerNorm")
  out = {path + ("scale",): np.ones(cfg.hidden_size, np.float32)}
  if cfg.layer_norm_bias:
    out[path + ("bias",)] = np.zeros(cfg.hidden_size, np.float32)
  return out


def _pattern(hf: dict, layers: int, path: str) -> int:
  """global_attention_every from layer_types (or the older global_attn_every_n_layers)."""
  types = hf.get("layer_types")
  if types is None:
    every = int(hf.get("global_attn_every_n_layers", 3))
    types = ["sliding_attention" if i % every else "full_attention" for i in range(layers)]
  if len(types) != layers or set(types) - {"full_attention", "sliding_attention"}:
    raise InteropError(f"{path}: layer_types={types!r} is not {layers} of 'full_attention' / "
                       "'sliding_attention'")
  if "sliding_attention" not in types:
    return 1
  for every in range(1, layers + 1):
    if types == ["sliding_attention" if i % every else "full_attention" for i in range(layers)]:
      return every
  if "full_attention" not in types:
    return 0
  raise InteropError(f"{path}: layer_types={types!r} is not global every n-th layer from layer 0 "
                     "(the only pattern mebert's global_attention_every expresses)")


def _rope_theta(hf: dict, kind: str, path: str) -> float:
  params = (hf.get("rope_parameters") or {}).get(kind) or {}
  rope_type = params.get("rope_type", "default")
  if rope_type != "default":
    raise InteropError(f"{path}: rope_parameters.{kind}.rope_type={rope_type!r}; only 'default' "
                       "RoPE maps to mebert")
  legacy = "global_rope_theta" if kind == "full_attention" else "local_rope_theta"
  return float(params.get("rope_theta", hf.get(legacy, _ROPE_DEFAULTS[kind])))


def kwargs_from_hf(hf: dict, path: str) -> dict:
  missing = [k for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                         "intermediate_size") if k not in hf]
  if missing:
    raise InteropError(f"{path}: missing key(s) {missing}")
  act = hf.get("hidden_activation", "gelu")
  if act != "gelu":
    raise InteropError(f"{path}: hidden_activation={act!r}; mebert's GeGLU is exact-GELU ('gelu')")
  head_act = hf.get("classifier_activation", "gelu")
  if head_act != "gelu":
    raise InteropError(f"{path}: classifier_activation={head_act!r}; mebert's heads use 'gelu'")
  biases = {k: bool(hf.get(k, False)) for k in ("attention_bias", "mlp_bias", "classifier_bias")}
  if len(set(biases.values())) > 1:
    raise InteropError(f"{path}: {biases} differ; mebert's use_bias sets all of them at once")
  if not hf.get("decoder_bias", True):
    raise InteropError(f"{path}: decoder_bias=False; mebert's MLM head has an output bias")
  layers = int(hf["num_hidden_layers"])
  every = _pattern(hf, layers, path)
  window = int(hf.get("local_attention", 128)) if every != 1 else 0
  pad = hf.get("pad_token_id")
  return dict(
      family="modernbert", vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"],
      num_layers=layers, num_heads=hf["num_attention_heads"],
      intermediate_size=hf["intermediate_size"], hidden_act="geglu",
      max_position_embeddings=int(hf.get("max_position_embeddings", 8192)),
      dropout_rate=float(hf.get("mlp_dropout", 0.0)),
      attention_dropout_rate=float(hf.get("attention_dropout", 0.0)),
      layer_norm_eps=float(hf.get("norm_eps", 1e-5)),
      initializer_range=float(hf.get("initializer_range", 0.02)),
      pad_token_id=0 if pad is None else int(pad), position_encoding="rotary",
      use_segment_embeddings=False, pre_layer_norm=True, use_bias=biases["attention_bias"],
      layer_norm_bias=bool(hf.get("norm_bias", False)),
      rotary_base=_rope_theta(hf, "full_attention", path),
      local_rotary_base=_rope_theta(hf, "sliding_attention", path),
      local_attention_window=window, global_attention_every=every,
      first_layer_attention_norm=False,
      classifier_pooling=hf.get("classifier_pooling", "cls"))


def config_to_hf(cfg: ModelConfig) -> dict:
  every = cfg.global_attention_every if cfg.local_attention_window else 1
  types = ["sliding_attention" if cfg.layer_is_local(i) else "full_attention"
           for i in range(cfg.num_layers)]
  local_base = float(cfg.local_rotary_base or cfg.rotary_base)
  return {
      "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
      "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
      "intermediate_size": cfg.intermediate_size, "hidden_activation": "gelu",
      "max_position_embeddings": cfg.max_position_embeddings,
      "initializer_range": cfg.initializer_range, "norm_eps": cfg.layer_norm_eps,
      "norm_bias": cfg.layer_norm_bias, "pad_token_id": cfg.pad_token_id,
      "attention_bias": cfg.use_bias, "mlp_bias": cfg.use_bias, "classifier_bias": cfg.use_bias,
      "decoder_bias": True, "attention_dropout": cfg.attention_dropout_rate,
      "mlp_dropout": cfg.dropout_rate, "embedding_dropout": cfg.dropout_rate,
      "classifier_dropout": cfg.dropout_rate, "classifier_activation": "gelu",
      "classifier_pooling": cfg.classifier_pooling,
      "layer_types": types, "local_attention": cfg.local_attention_window or 128,
      "rope_parameters": {
          "full_attention": {"rope_type": "default", "rope_theta": float(cfg.rotary_base)},
          "sliding_attention": {"rope_type": "default", "rope_theta": local_base}},
      # Older transformers (4.48-4.5x) read these instead of layer_types / rope_parameters.
      "global_attn_every_n_layers": every if every else cfg.num_layers + 1,
      "global_rope_theta": float(cfg.rotary_base), "local_rope_theta": local_base,
  }


def refusals(cfg: ModelConfig) -> list[tuple[str, bool, str]]:
  every_layer_local = cfg.local_attention_window and cfg.global_attention_every == 0
  return [
      ("pre_layer_norm", not cfg.pre_layer_norm, "True"),
      ("hidden_act", cfg.hidden_act != "geglu", "'geglu'"),
      ("position_encoding", cfg.position_encoding != "rotary", "'rotary'"),
      ("use_segment_embeddings", cfg.use_segment_embeddings, "False"),
      ("encoding_fusion", cfg.encoding_fusion != "sum", "'sum'"),
      ("embedding_size", cfg.embedding_width != cfg.hidden_size, "0"),
      ("position_offset", cfg.position_offset != 0, "0"),
      ("first_layer_attention_norm", cfg.first_layer_attention_norm, "False"),
      ("global_attention_every", bool(every_layer_local),
       "a global layer 0 (older transformers cannot express every layer local)"),
  ]
