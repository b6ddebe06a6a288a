"""mebert params + ModelConfig -> a folder transformers loads with from_pretrained.

The architecture follows the params: a classifier makes BertForSequenceClassification or
BertForTokenClassification (by task kind, with id2label/label2id), MLM/NSP heads make
BertForPreTraining, a bare encoder makes BertModel. Weights go to model.safetensors under the keys
transformers' own save_pretrained writes: the MLM decoder weight and bias are tied (to the word
embeddings and cls.predictions.bias) and so are not stored; config.json says tie_word_embeddings.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil

import numpy as np

from mebert.interop import hf_names
from mebert.interop.errors import InteropError
from mebert.interop.hf_config import check_exportable, hf_config_from_model
from mebert.model.config import ModelConfig

log = logging.getLogger(__name__)

ARCHITECTURES = {"classification": "BertForSequenceClassification",
                 "token_classification": "BertForTokenClassification"}


@dataclasses.dataclass
class ExportReport:
  folder: str
  architecture: str
  tensors: int
  tokenizer_files: list[str] = dataclasses.field(default_factory=list)
  parity: dict[str, float] | None = None
  notes: list[str] = dataclasses.field(default_factory=list)

  def summary(self) -> str:
    lines = [f"exported {self.architecture} to {self.folder}: {self.tensors} tensors in "
             f"model.safetensors; tokenizer: {', '.join(self.tokenizer_files) or 'none'}"]
    if self.parity is not None:
      lines.append("parity (max abs diff vs transformers): "
                   + ", ".join(f"{k}={v:.2e}" for k, v in self.parity.items()))
    lines += self.notes
    return "\n".join(lines)


def normalize_params(params) -> dict:
  """Host numpy arrays in the unrolled layout, whatever the checkpoint held (a {"params": ...}
  wrapper, jax arrays, scanned layers)."""
  import jax

  if isinstance(params, dict) and set(params) == {"params"}:
    params = params["params"]
  params = jax.tree.map(np.asarray, dict(params))
  params = {k: dict(v) if isinstance(v, dict) else v for k, v in params.items()}
  if "bert" not in params:
    raise InteropError(f"params have no 'bert' subtree (top-level keys: {sorted(params)})")
  return hf_names.unstack_layers(params) if hf_names.is_stacked(params) else params


def _architecture(params: dict, task_kind: str | None) -> str:
  if "classifier" in params:
    if task_kind not in ARCHITECTURES:
      raise InteropError(f"params have a classifier but task kind is {task_kind!r}; set "
                         f"config task.kind to one of {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[task_kind]
  return "BertForPreTraining" if "cls" in params else "BertModel"


def _groups(params: dict, architecture: str) -> list[str]:
  groups = ["embeddings", "layer"]
  if architecture != "BertForTokenClassification":  # HF's token classifier has no pooler
    groups.append("pooler")
  if architecture == "BertForPreTraining":
    groups += ["mlm", "nsp"]
  if "classifier" in params:
    groups.append("classifier")
  return groups


def state_dict(params: dict, cfg: ModelConfig, architecture: str) -> dict[str, np.ndarray]:
  """HF key -> float32 array, checking every tensor the architecture needs is there and fits."""
  groups = _groups(params, architecture)
  num_labels = params["classifier"]["bias"].shape[0] if "classifier" in params else None
  out = {}
  for entry in hf_names.entries(cfg.num_layers, num_labels=num_labels):
    if entry.group not in groups:
      continue
    if not hf_names.has_path(params, entry.path):
      raise InteropError(f"params lack {'/'.join(entry.path)}, needed for {architecture} "
                         f"({entry.hf})")
    key = entry.hf.removeprefix("bert.") if architecture == "BertModel" else entry.hf
    out[key] = hf_names.to_hf(hf_names.get_path(params, entry.path), entry).astype(np.float32)
  word = out["embeddings.word_embeddings.weight" if architecture == "BertModel"
             else "bert.embeddings.word_embeddings.weight"]
  if word.shape != (cfg.vocab_size, cfg.hidden_size):
    raise InteropError(f"params bert/embeddings/word_embeddings/embedding has shape "
                       f"{list(word.shape)}, model config says [{cfg.vocab_size}, {cfg.hidden_size}]")
  return out


def write_tokenizer(folder: str, tokenizer_path: str | None, cfg: ModelConfig,
                    lowercase: bool | None, report: ExportReport):
  """Writes the tokenizer files transformers loads (BertTokenizerFast's for WordPiece, a
  tokenizer.json for a unigram sentencepiece model); returns the tokenizer for the parity gate, or
  None when only the weights are exported."""
  from mebert.interop.wordpiece import WordPiece

  if not tokenizer_path:
    report.notes.append("no tokenizer file given: only the weights are exported")
    return None
  if not os.path.exists(tokenizer_path):
    report.notes.append(f"tokenizer {tokenizer_path} not found: only the weights are exported")
    return None
  if tokenizer_path.endswith(".model"):
    from mebert.interop.spm_convert import save_spm_for_transformers, spm_to_tokenizer

    try:
      tokenizer = spm_to_tokenizer(tokenizer_path)
    except InteropError as e:  # e.g. a BPE model: no faithful tokenizer.json, say so plainly
      shutil.copy(tokenizer_path, os.path.join(folder, "spiece.model"))
      report.tokenizer_files.append("spiece.model")
      report.notes.append(f"only the weights are exported for transformers: {e}; spiece.model is "
                          "copied for reference")
      return None
    if tokenizer.vocab_size > cfg.vocab_size:
      raise InteropError(f"{tokenizer_path}: {tokenizer.vocab_size} pieces but the model's "
                         f"vocab_size is {cfg.vocab_size}")
    report.tokenizer_files = save_spm_for_transformers(
        tokenizer_path, folder, model_max_length=cfg.max_position_embeddings)
    report.notes.append("sentencepiece vocab written as a tokenizers tokenizer.json "
                        "(AutoTokenizer loads it as PreTrainedTokenizerFast)")
    return tokenizer
  tokenizer = WordPiece.from_file(tokenizer_path, lowercase=lowercase)
  if tokenizer.vocab_size > cfg.vocab_size:
    raise InteropError(f"{tokenizer_path}: {tokenizer.vocab_size} tokens but the model's "
                       f"vocab_size is {cfg.vocab_size}")
  report.tokenizer_files = tokenizer.save(folder, model_max_length=cfg.max_position_embeddings)
  return tokenizer


def export_hf(params, cfg: ModelConfig, folder: str, *, labels: list[str] | None = None,
              task_kind: str | None = None, tokenizer_path: str | None = None,
              lowercase: bool | None = None, parity: bool = True) -> ExportReport:
  """Writes `folder` (config.json, model.safetensors, tokenizer files) and runs the parity gate."""
  from safetensors.numpy import save_file

  check_exportable(cfg)
  params = normalize_params(params)
  cfg = cfg.replace(scan_layers=False)
  architecture = _architecture(params, task_kind)
  tensors = state_dict(params, cfg, architecture)
  if "classifier" in params:
    num_labels = params["classifier"]["bias"].shape[0]
    labels = list(labels) if labels else [f"LABEL_{i}" for i in range(num_labels)]
    if len(labels) != num_labels:
      raise InteropError(f"{len(labels)} label names for a classifier with {num_labels} outputs")
  else:
    labels = None
  os.makedirs(folder, exist_ok=True)
  save_file(tensors, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
  with open(os.path.join(folder, "config.json"), "w", encoding="utf-8") as f:
    json.dump(hf_config_from_model(cfg, architecture, labels), f, indent=2)
  report = ExportReport(folder=folder, architecture=architecture, tensors=len(tensors))
  tokenizer = write_tokenizer(folder, tokenizer_path, cfg, lowercase, report)
  if parity:
    from mebert.interop import parity as parity_lib

    report.parity = parity_lib.run_gate(
        folder, cfg, params, groups=_groups(params, architecture), task_kind=task_kind,
        tokenizer=tokenizer, where=f"export {os.path.basename(os.path.normpath(folder))}")
    if report.parity is None:
      report.notes.append("parity gate skipped: torch/transformers not importable")
  return report
