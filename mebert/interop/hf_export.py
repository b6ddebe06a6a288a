"""mebert params + ModelConfig -> a folder transformers loads with from_pretrained.

The Hugging Face family is model.family (BERT, RoBERTa, ELECTRA, ModernBERT); the architecture
follows the params: a classifier makes *ForSequenceClassification or *ForTokenClassification (by
task kind, with id2label/label2id), BERT's MLM/NSP heads make BertForPreTraining, ELECTRA's
discriminator head ElectraForPreTraining, another family's MLM head *ForMaskedLM, a bare encoder
*Model. Weights go to model.safetensors under the keys transformers' own save_pretrained writes:
the MLM decoder is tied to the word embeddings and so is not stored; config.json says
tie_word_embeddings. An ELECTRA pretraining tree exports its discriminator (the generator stays).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil

import numpy as np

from mebert.interop import hf_families, hf_names
from mebert.interop.errors import InteropError
from mebert.interop.hf_config import check_exportable, hf_config_from_model
from mebert.model import layout
from mebert.model.config import ModelConfig

log = logging.getLogger(__name__)

TASK_KINDS = ("classification", "token_classification")


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
  """mebert.model.layout.normalize_params, failing with an InteropError (the CLI's one line)."""
  try:
    return layout.normalize_params(params)
  except ValueError as e:
    raise InteropError(str(e)) from None


def num_classifier_outputs(classifier: dict) -> int:
  """The classifier's output count: BERT's {kernel, bias}, or the out_proj of a two-layer head."""
  last = classifier["out_proj"] if "out_proj" in classifier else classifier
  return int(np.asarray(last["bias"]).shape[0])


def export_role(family, params: dict, task_kind: str | None) -> str:
  """Which of the family's classes the params make (see hf_families.ROLES)."""
  if "classifier" in params:
    if task_kind not in TASK_KINDS:
      raise InteropError(f"params have a classifier but task kind is {task_kind!r}; set "
                         f"config task.kind to one of {sorted(TASK_KINDS)}")
    return task_kind
  if family.name == "electra" and "discriminator_predictions" in params:
    return "pretraining"
  if "cls" in params and family.name != "electra":
    nsp = "seq_relationship" in params["cls"]
    return "pretraining" if family.name == "bert" and nsp else "mlm"
  return "base"


def _architecture(params: dict, task_kind: str | None, cfg: ModelConfig | None = None) -> str:
  family = hf_families.family(cfg.family if cfg is not None else "bert")
  return family.classes[export_role(family, params, task_kind)]


def _groups(params: dict, architecture: str, cfg: ModelConfig | None = None) -> list[str]:
  family = hf_families.family(cfg.family if cfg is not None else "bert")
  has_pooler = "pooler" in params.get("bert", {})
  return family.groups(family.role_of(architecture), has_pooler)


def state_dict(params: dict, cfg: ModelConfig, architecture: str,
               task_kind: str | None = None) -> dict[str, np.ndarray]:
  """HF key -> float32 array, checking every tensor the architecture needs is there and fits."""
  family = hf_families.family(cfg.family)
  role = family.role_of(architecture)
  groups = _groups(params, architecture, cfg)
  num_labels = num_classifier_outputs(params["classifier"]) if "classifier" in params else None
  parts: dict[str, list[tuple[int, np.ndarray]]] = {}
  for entry in hf_names.entries(cfg, num_labels=num_labels, task_kind=task_kind):
    if entry.group not in groups:
      continue
    if not hf_names.has_path(params, entry.path):
      raise InteropError(f"params lack {'/'.join(entry.path)}, needed for {architecture} "
                         f"({entry.hf})")
    value = np.asarray(hf_names.get_path(params, entry.path))
    if value.shape != entry.shape:
      raise InteropError(f"params {'/'.join(entry.path)} has shape {list(value.shape)}, model "
                         f"config says {list(entry.shape)}")
    key = entry.hf
    if role == "base":  # a bare base model: its keys have no prefix
      key = key.removeprefix(family.prefix + ".")
    index = entry.part[0] if entry.part else 0
    parts.setdefault(key, []).append((index, hf_names.to_hf(value, entry).astype(np.float32)))
  return {k: np.concatenate([v for _, v in sorted(p, key=lambda x: x[0])], axis=0)
          if len(p) > 1 else p[0][1] for k, p in parts.items()}


def write_tokenizer(folder: str, tokenizer_path: str | None, cfg: ModelConfig,
                    lowercase: bool | None, report: ExportReport):
  """Writes the tokenizer files transformers loads (BertTokenizerFast's for WordPiece, a
  tokenizer.json for a unigram sentencepiece model); returns the tokenizer for the parity gate, or
  None when only the weights are exported."""
  if not tokenizer_path:
    report.notes.append("no tokenizer file given: only the weights are exported")
    return None
  if not os.path.exists(tokenizer_path):
    report.notes.append(f"tokenizer {tokenizer_path} not found: only the weights are exported")
    return None
  if tokenizer_path.endswith(".model"):
    from mebert.interop.spm_convert import save_spm_for_transformers, spm_to_tokenizer

    # One token type (RoBERTa) or none (ModernBERT): a pair's second sentence keeps type 0.
    pair_type_id = 1 if cfg.use_segment_embeddings and cfg.type_vocab_size > 1 else 0
    try:
      tokenizer = spm_to_tokenizer(tokenizer_path, pair_type_id)
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
        tokenizer_path, folder, model_max_length=cfg.max_position_embeddings,
        pair_type_id=pair_type_id, token_types=cfg.use_segment_embeddings)
    report.notes.append("sentencepiece vocab written as a tokenizers tokenizer.json "
                        "(AutoTokenizer loads it as PreTrainedTokenizerFast)")
    return tokenizer
  from mebert.interop.hf_tokenizer import load_folder_tokenizer

  tokenizer = load_folder_tokenizer(tokenizer_path, lowercase=lowercase)
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
  architecture = _architecture(params, task_kind, cfg)
  tensors = state_dict(params, cfg, architecture, task_kind)
  if "classifier" in params:
    num_labels = num_classifier_outputs(params["classifier"])
    labels = list(labels) if labels else [f"LABEL_{i}" for i in range(num_labels)]
    if len(labels) != num_labels:
      raise InteropError(f"{len(labels)} label names for a classifier with {num_labels} outputs")
  else:
    labels = None
  os.makedirs(folder, exist_ok=True)
  save_file(tensors, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
  report = ExportReport(folder=folder, architecture=architecture, tensors=len(tensors))
  tokenizer = write_tokenizer(folder, tokenizer_path, cfg, lowercase, report)
  config = hf_config_from_model(cfg, architecture, labels)
  if tokenizer is not None and cfg.family in ("roberta", "modernbert"):
    # Their configs name the sequence specials (the forward pass reads none of them).
    config.update(bos_token_id=tokenizer.cls_id, eos_token_id=tokenizer.sep_id)
    if cfg.family == "modernbert":
      config.update(cls_token_id=tokenizer.cls_id, sep_token_id=tokenizer.sep_id)
  with open(os.path.join(folder, "config.json"), "w", encoding="utf-8") as f:
    json.dump(config, f, indent=2)
  if parity:
    from mebert.interop import parity as parity_lib

    report.parity = parity_lib.run_gate(
        folder, cfg, params, groups=_groups(params, architecture, cfg), task_kind=task_kind,
        tokenizer=tokenizer, where=f"export {os.path.basename(os.path.normpath(folder))}")
    if report.parity is None:
      report.notes.append("parity gate skipped: torch/transformers not importable")
  return report
