"""Hugging Face `config.json` <-> mebert ModelConfig (BertConfig here; RobertaConfig,
ElectraConfig and ModernBertConfig through the families in mebert.interop.hf_families).

Only the architecture keys cross over; runtime choices (dtype, scan_layers, remat, attention
backend) stay whatever the caller asks for. What the Hugging Face family cannot express is refused
on export, naming the key, rather than written as a model that would compute something else.
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
  """The ModelConfig architecture keys a config.json implies (by its model_type); refuses, naming
  the key, what mebert cannot compute the same way."""
  from mebert.interop import hf_families

  return hf_families.for_model_type(hf.get("model_type", "bert"), path).kwargs_from_hf(hf, path)


def bert_like_kwargs(hf: dict, path: str, model_type: str) -> dict:
  """BertConfig's keys (RobertaConfig and ElectraConfig share them)."""
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
    kwargs["pad_token_id"] = 1 if model_type in ("roberta", "xlm-roberta") else 0
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
  """Refuses, with the key, any ModelConfig the family's Hugging Face classes would compute
  differently."""
  from mebert.interop import hf_families

  family = hf_families.family(cfg.family)
  for key, bad, want in family.refusals(cfg):
    if bad:
      raise InteropError(f"cannot export to Hugging Face {family.title}: model.{key}="
                         f"{getattr(cfg, key)!r}, {family.title} needs {want}")


def bert_like_refusals(cfg: ModelConfig) -> list[tuple[str, bool, str]]:
  """What BertModel-shaped encoders (BERT, RoBERTa, ELECTRA) all need."""
  return [
      ("position_encoding", cfg.position_encoding != "learned", "'learned'"),
      ("pre_layer_norm", cfg.pre_layer_norm, "False (post-LN)"),
      ("hidden_act", cfg.hidden_act not in _ACT_TO_HF, f"one of {sorted(_ACT_TO_HF)}"),
      ("encoding_fusion", cfg.encoding_fusion != "sum", "'sum'"),
      ("use_bias", not cfg.use_bias, "True"),
      ("layer_norm_bias", not cfg.layer_norm_bias, "True"),
      ("use_segment_embeddings", not cfg.use_segment_embeddings, "True"),
      ("local_attention_window", cfg.local_attention_window != 0, "0 (global attention)"),
      ("classifier_pooling", cfg.classifier_pooling != "cls", "'cls'"),
  ]


def bert_like_config(cfg: ModelConfig) -> dict:
  out = {theirs: getattr(cfg, ours) for theirs, ours in HF_TO_MEBERT_KEYS.items()}
  out.update(hidden_act=_ACT_TO_HF[cfg.hidden_act], position_embedding_type="absolute")
  return out


def hf_config_from_model(cfg: ModelConfig, architecture: str,
                         labels: list[str] | None = None) -> dict:
  from mebert.interop import hf_families

  check_exportable(cfg)
  family = hf_families.family(cfg.family)
  out = {"architectures": [architecture], "model_type": family.model_types[0]}
  out.update(family.config_to_hf(cfg))
  out.update(tie_word_embeddings=True, dtype="float32", torch_dtype="float32")
  if labels is not None:
    out["id2label"] = {str(i): name for i, name in enumerate(labels)}
    out["label2id"] = {name: i for i, name in enumerate(labels)}
  return out


# The ModelConfig keys that decide parameter shapes or the function computed; the rest (dtype,
# scan_layers, remat, attention backend, dropout) are free to differ from the checkpoint's.
ARCHITECTURE_KEYS = ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
                     "hidden_act", "max_position_embeddings", "type_vocab_size", "layer_norm_eps",
                     "position_encoding", "use_segment_embeddings", "encoding_fusion",
                     "pre_layer_norm", "use_bias", "family", "embedding_size", "position_offset",
                     "layer_norm_bias", "rotary_base", "local_rotary_base",
                     "local_attention_window", "global_attention_every",
                     "first_layer_attention_norm", "classifier_pooling")


def check_same_architecture(model: ModelConfig, source: ModelConfig, origin: str) -> None:
  """Raises naming every architecture key where the run's model differs from the source weights
  (e.g. trainer config vs init.hf folder), so a mismatch fails before any shape error."""
  diffs = [f"model.{k}={getattr(model, k)!r} but {origin} has {getattr(source, k)!r}"
           for k in ARCHITECTURE_KEYS if getattr(model, k) != getattr(source, k)]
  if diffs:
    raise InteropError("; ".join(diffs))
