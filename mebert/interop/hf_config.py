"""Hugging Face `config.json` (BertConfig) <-> mebert ModelConfig.

Only the architecture keys cross over; runtime choices (dtype, scan_layers, remat, attention
backend) stay whatever the caller asks for. What Hugging Face BERT cannot express is refused on
export, naming the key, rather than written as a model that would compute something else.
"""

from __future__ import annotations

import json
import os

from mebert.interop.errors import InteropError
from mebert.model.config import ModelConfig

# HF key -> ModelConfig key, for keys that map one to one (public: the transformers peer names
# its dropout overrides through it).
HF_TO_MEBERT_KEYS = {
    "vocab_size": "vocab_size",
    "hidden_size": "hidden_size",
    "num_hidden_layers": "num_layers",
    "num_attention_heads": "num_heads",
    "intermediate_size": "intermediate_size",
    "max_position_embeddings": "max_position_embeddings",
    "type_vocab_size": "type_vocab_size",
    "hidden_dropout_prob": "dropout_rate",
    "attention_probs_dropout_prob": "attention_dropout_rate",
    "layer_norm_eps": "layer_norm_eps",
    "initializer_range": "initializer_range",
    "pad_token_id": "pad_token_id",
}
_REQUIRED = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
             "intermediate_size")
# HF activation names -> mebert's; "gelu" in HF is the exact erf GELU, as in mebert.
_ACT_FROM_HF = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
                "relu": "relu"}
_ACT_TO_HF = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu"}


def read_hf_config(folder: str) -> dict:
  path = os.path.join(folder, "config.json")
  if not os.path.isfile(path):
    raise InteropError(f"{path}: missing; a Hugging Face model folder needs config.json")
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise InteropError(f"{path}: not valid JSON ({e})") from None


def model_kwargs_from_hf(hf: dict, path: str = "config.json") -> dict:
  """The ModelConfig architecture keys a BertConfig dict implies; refuses what BERT-in-mebert lacks."""
  model_type = hf.get("model_type", "bert")
  if model_type != "bert":
    raise InteropError(f"{path}: model_type={model_type!r}; only 'bert' is supported")
  missing = [k for k in _REQUIRED if k not in hf]
  if missing:
    raise InteropError(f"{path}: missing key(s) {missing}")
  position = hf.get("position_embedding_type", "absolute")
  if position != "absolute":
    raise InteropError(f"{path}: position_embedding_type={position!r}; only 'absolute' maps to "
                       "mebert's learned positions")
  act = hf.get("hidden_act", "gelu")
  if act not in _ACT_FROM_HF:
    raise InteropError(f"{path}: hidden_act={act!r} is not one of {sorted(_ACT_FROM_HF)}")
  kwargs = {ours: hf[theirs] for theirs, ours in HF_TO_MEBERT_KEYS.items() if theirs in hf}
  if kwargs.get("pad_token_id") is None:
    kwargs["pad_token_id"] = 0
  kwargs["hidden_act"] = _ACT_FROM_HF[act]
  kwargs["position_encoding"] = "learned"
  return kwargs


def model_config_from_hf(hf: dict, path: str = "config.json", **runtime) -> ModelConfig:
  try:
    return ModelConfig(**{**model_kwargs_from_hf(hf, path), **runtime})
  except (TypeError, ValueError) as e:
    if isinstance(e, InteropError):
      raise
    raise InteropError(f"{path}: {e}") from None


def check_exportable(cfg: ModelConfig) -> None:
  """Refuses, with the key, any ModelConfig Hugging Face's BertModel would compute differently."""
  refusals = [
      ("position_encoding", cfg.position_encoding != "learned", "'learned'"),
      ("pre_layer_norm", cfg.pre_layer_norm, "False (BERT is post-LN)"),
      ("hidden_act", cfg.hidden_act not in _ACT_TO_HF, f"one of {sorted(_ACT_TO_HF)}"),
      ("encoding_fusion", cfg.encoding_fusion != "sum", "'sum'"),
      ("use_bias", not cfg.use_bias, "True"),
      ("use_segment_embeddings", not cfg.use_segment_embeddings, "True"),
  ]
  for key, bad, want in refusals:
    if bad:
      raise InteropError(f"cannot export to Hugging Face BERT: model.{key}="
                         f"{getattr(cfg, key)!r}, BERT needs {want}")


def hf_config_from_model(cfg: ModelConfig, architecture: str,
                         labels: list[str] | None = None) -> dict:
  check_exportable(cfg)
  out = {"architectures": [architecture], "model_type": "bert"}
  out.update({theirs: getattr(cfg, ours) for theirs, ours in HF_TO_MEBERT_KEYS.items()})
  out.update(hidden_act=_ACT_TO_HF[cfg.hidden_act], position_embedding_type="absolute",
             tie_word_embeddings=True, dtype="float32", torch_dtype="float32")
  if labels is not None:
    out["id2label"] = {str(i): name for i, name in enumerate(labels)}
    out["label2id"] = {name: i for i, name in enumerate(labels)}
  return out


# The ModelConfig keys that decide parameter shapes or the function computed; the rest (dtype,
# scan_layers, remat, attention backend, dropout) are free to differ from the checkpoint's.
ARCHITECTURE_KEYS = ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
                     "hidden_act", "max_position_embeddings", "type_vocab_size", "layer_norm_eps",
                     "position_encoding", "use_segment_embeddings", "encoding_fusion",
                     "pre_layer_norm", "use_bias")


def check_same_architecture(model: ModelConfig, source: ModelConfig, origin: str) -> None:
  """Raises naming every architecture key where the run's model differs from the source weights
  (e.g. trainer config vs init.hf folder), so a mismatch fails before any shape error."""
  diffs = [f"model.{k}={getattr(model, k)!r} but {origin} has {getattr(source, k)!r}"
           for k in ARCHITECTURE_KEYS if getattr(model, k) != getattr(source, k)]
  if diffs:
    raise InteropError("; ".join(diffs))
