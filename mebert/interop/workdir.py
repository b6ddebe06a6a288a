"""Hugging Face folder <-> mebert workdir: the conversions the CLI runs.

An imported workdir is an ordinary params-only mebert checkpoint (WORKDIR/checkpoints/<step>/ with
params and config) plus WORKDIR/vocab/ holding the tokenizer files, which config["data"]["vocab"]
points at, so training, fine-tuning, evaluation and export can start from it like from any run.
"""

from __future__ import annotations

import dataclasses
import os
import shutil

from mebert.interop.errors import InteropError
from mebert.interop.hf_export import ExportReport, export_hf
from mebert.interop.hf_import import ImportReport, load_hf_bert
from mebert.model.config import ModelConfig

_TOKENIZER_SIDE_FILES = ("tokenizer_config.json", "special_tokens_map.json")


def copy_tokenizer(folder: str, report: ImportReport, workdir: str) -> tuple[str | None, bool | None]:
  """Copies the folder's tokenizer to WORKDIR/vocab/ (always with a tokenizer.json, which carries
  the lowercasing a bare vocab.txt does not); returns (path for data.vocab, lowercase). Any
  tokenizer the import accepted: BERT's WordPiece, RoBERTa's byte-level BPE, XLM-R's Unigram."""
  from mebert.interop.hf_tokenizer import load_folder_tokenizer

  if not report.tokenizer:
    return None, None
  vocab_dir = os.path.join(workdir, "vocab")
  os.makedirs(vocab_dir, exist_ok=True)
  tokenizer = load_folder_tokenizer(report.tokenizer)
  for name in ("tokenizer.json", "vocab.txt") + _TOKENIZER_SIDE_FILES:
    if os.path.isfile(os.path.join(folder, name)):
      shutil.copy(os.path.join(folder, name), os.path.join(vocab_dir, name))
  if not os.path.isfile(os.path.join(vocab_dir, "tokenizer.json")):
    tokenizer.tokenizer.save(os.path.join(vocab_dir, "tokenizer.json"))
  return os.path.join(vocab_dir, "tokenizer.json"), tokenizer.lowercase


def import_to_workdir(folder: str, workdir: str, *, scan_layers: bool = False,
                      allow_pickle: bool = False, parity: bool = True, step: int = 0,
                      **runtime) -> ImportReport:
  """load_hf_bert + save_params_checkpoint; config_dict has model, data.vocab, init.hf, task."""
  from mebert.train.checkpoints import save_params_checkpoint

  folder = os.path.abspath(folder)
  cfg, params, report = load_hf_bert(folder, scan_layers=scan_layers, allow_pickle=allow_pickle,
                                     parity=parity, **runtime)
  workdir = os.path.abspath(workdir)
  if os.path.isdir(os.path.join(workdir, "checkpoints", str(step))):
    raise InteropError(f"{workdir}: already has checkpoint step {step}; choose another --to")
  vocab, lowercase = copy_tokenizer(folder, report, workdir)
  config_dict = {"model": dataclasses.asdict(cfg),
                 "data": {"vocab": vocab or "", "lowercase": bool(lowercase)},
                 "init": {"hf": folder}}
  if report.labels is not None:
    config_dict["task"] = {"kind": report.task_kind, "labels": report.labels}
  save_params_checkpoint(workdir, params, config_dict, step)
  return report


def export_workdir(workdir: str, folder: str, *, step: int | None = None,
                   parity: bool = True) -> ExportReport:
  """restore_params + export_hf, with labels, task kind and tokenizer from the saved config."""
  from mebert.train.checkpoints import CheckpointError, restore_params

  try:
    params, config_dict = restore_params(workdir, step)
  except CheckpointError as e:
    raise InteropError(str(e)) from None
  model = dict(config_dict.get("model") or {})
  if not model:
    raise InteropError(f"{workdir}: checkpoint config has no 'model' section")
  try:  # a trainer config may leave vocab_size to the tokenizer: the embedding table knows it
    table = params.get("bert", {}).get("embeddings", {}).get("word_embeddings", {}).get("embedding")
    cfg = ModelConfig.from_dict(model, vocab_size=None if table is None else int(table.shape[0]))
  except ValueError as e:
    raise InteropError(f"{workdir}: {e}") from None
  task = config_dict.get("task") or {}
  data = config_dict.get("data") or {}
  vocab = _saved_vocab(workdir, data.get("vocab") or "")
  trained = os.path.join(workdir, "vocab", "spm.model")  # a pretraining run's own vocabulary
  if vocab is None and os.path.isfile(trained):
    vocab = trained
  return export_hf(params, cfg, folder, labels=task.get("labels"), task_kind=task.get("kind"),
                   tokenizer_path=vocab,
                   lowercase=data.get("lowercase", True),  # the data pipeline's default
                   parity=parity)


def _saved_vocab(workdir: str, vocab: str) -> str | None:
  """The saved config's tokenizer; in a moved or copied workdir, its own WORKDIR/vocab/ copy."""
  if not vocab or os.path.exists(vocab):
    return vocab or None
  local = os.path.join(workdir, "vocab", os.path.basename(vocab.rstrip("/")))
  return local if os.path.exists(local) else vocab
