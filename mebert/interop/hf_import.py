"""A Hugging Face BERT, RoBERTa/XLM-R, ELECTRA or ModernBERT folder -> (ModelConfig, mebert
params, ImportReport).

The encoder (embeddings and every layer) must be in the folder, whole and with the shapes its
config.json implies; the optional parts (pooler, MLM head, NSP head, ELECTRA's discriminator head,
classifier) are taken when present. For BERT the absent pooler and pretraining heads are
initialised with mebert's own init and listed in the report, since e.g. sentence-transformers'
MiniLM ships a bare BertModel; the other families return what the folder holds (a run that needs
more initialises it itself). Returned params are the pretraining tree {"bert", "cls", ...} plus
{"classifier"} when the folder has one; with scan_layers=True the layers are stacked into
bert/encoder/layer, as the scanned model expects.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import numpy as np

from mebert.interop import hf_families, hf_names
from mebert.interop.errors import InteropError
from mebert.interop.hf_config import model_config_from_hf, read_hf_config
from mebert.interop.hf_weights import open_weights
from mebert.model.config import ModelConfig

log = logging.getLogger(__name__)

TASK_KINDS = {"BertForSequenceClassification": "classification",
              "BertForTokenClassification": "token_classification"}


@dataclasses.dataclass
class ImportReport:
  folder: str
  architecture: str  # config.json's architectures[0] (or "BertModel")
  weight_files: list[str]
  loaded: list[str] = dataclasses.field(default_factory=list)  # Hugging Face keys used
  missing: list[str] = dataclasses.field(default_factory=list)  # mebert paths initialised here
  unused: list[str] = dataclasses.field(default_factory=list)  # Hugging Face keys not used
  groups: list[str] = dataclasses.field(default_factory=list)  # parts taken from the folder
  tokenizer: str | None = None  # the folder's tokenizer.json or vocab.txt, validated
  labels: list[str] | None = None
  task_kind: str | None = None
  parity: dict[str, float] | None = None  # max abs diffs of the parity gate; None if skipped
  notes: list[str] = dataclasses.field(default_factory=list)

  def summary(self) -> str:
    lines = [f"imported {self.folder} ({self.architecture}): {len(self.loaded)} tensors from "
             f"{', '.join(os.path.basename(f) for f in self.weight_files)}; parts: "
             f"{', '.join(self.groups)}"]
    if self.missing:
      lines.append(f"initialised (not in the folder): {', '.join(self.missing)}")
    if self.unused:
      lines.append(f"unused keys: {', '.join(self.unused)}")
    if self.parity is not None:
      lines.append("parity (max abs diff vs transformers): "
                   + ", ".join(f"{k}={v:.2e}" for k, v in self.parity.items()))
    lines += self.notes
    return "\n".join(lines)


def _resolve_key(weights, canonical: str, prefix: str = "bert") -> str | None:
  for name in hf_names.hf_aliases(canonical, prefix):
    if name in weights:
      return name
  return None


def _mebert_init(cfg: ModelConfig, groups: set[str], seed: int) -> dict:
  """mebert's own initialisation of the missing parts (unboxed numpy, BertForPreTraining paths).
  Only the modules needed are initialised: the whole model would cost a full compile."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp

  from mebert.model.encoder import Pooler
  from mebert.model.pretraining import PreTrainingHeads

  def init(key):  # jitted: one compile instead of one per op
    key_pooler, key_heads = jax.random.split(key)
    h = jnp.zeros((1, cfg.hidden_size), cfg.compute_dtype)
    params = {}
    if "pooler" in groups:
      params["bert"] = {"pooler": Pooler(cfg).init(key_pooler, h[:, None])["params"]}
    if groups & {"mlm", "nsp"}:
      table = jnp.zeros((cfg.vocab_size, cfg.embedding_width), cfg.compute_dtype)
      params["cls"] = PreTrainingHeads(cfg).init(key_heads, h[:, None], h, table)["params"]
    return nn.unbox(params)

  return jax.tree.map(np.asarray, jax.jit(init)(jax.random.PRNGKey(seed)))


def _expected_shapes(cfg: ModelConfig, num_labels: int | None,
                     task_kind: str | None = None) -> dict[tuple[str, ...], tuple]:
  """mebert shapes per path, from the config alone (no init)."""
  return {e.path: e.shape for e in hf_names.entries(cfg, num_labels=num_labels, task_kind=task_kind)}


def _labels(hf_cfg: dict, num_labels: int) -> list[str]:
  id2label = hf_cfg.get("id2label") or {}
  names = [id2label.get(str(i), id2label.get(i)) for i in range(num_labels)]
  return [n if n is not None else f"LABEL_{i}" for i, n in enumerate(names)]


def read_model_config(folder: str, **runtime) -> tuple[dict, ModelConfig]:
  """(config.json as a dict, the ModelConfig load_hf_bert builds from it) without opening the
  weights. Layers come unstacked (scan_layers=False): load_hf_bert stacks them after loading."""
  hf_cfg = read_hf_config(folder)
  cfg = model_config_from_hf(hf_cfg, os.path.join(folder, "config.json"),
                             **{**runtime, "scan_layers": False})
  return hf_cfg, cfg


def _role(family, architecture: str, has_classifier: bool) -> str:
  try:
    return family.role_of(architecture)
  except InteropError:  # e.g. a QuestionAnswering head: the encoder (and a classifier) still load
    return "classification" if has_classifier else "base"


def load_hf_bert(folder: str, *, scan_layers: bool = False, allow_pickle: bool = False,
                 parity: bool = True, heads: bool = True, seed: int = 0,
                 **runtime) -> tuple[ModelConfig, dict, ImportReport]:
  """Reads a Hugging Face folder of any supported family (config.json's model_type); see the
  module doc. `runtime` are further ModelConfig keys (dtype, attention_backend, remat_policy, ...).
  heads=False returns only what the folder has (no initialised BERT heads; for encoding only).
  Raises InteropError naming the file and tensor for anything unusable; runs the parity gate
  (mebert.interop.parity) unless parity=False."""
  hf_cfg, cfg = read_model_config(folder, **runtime)
  family = hf_families.family(cfg.family)
  weights = open_weights(folder, allow_pickle=allow_pickle)
  files = sorted(set(weights.files.values()))
  label_key = (_resolve_key(weights, "classifier.out_proj.weight", family.prefix)
               or _resolve_key(weights, "classifier.weight", family.prefix))
  num_labels = weights.shapes[label_key][0] if label_key else None
  architecture = (hf_cfg.get("architectures") or [family.classes["base"]])[0]
  role = _role(family, architecture, num_labels is not None)
  task_kind = hf_families.task_kind_of(role) or ("classification" if num_labels else None)
  report = ImportReport(folder=folder, architecture=architecture, weight_files=files)
  report.tokenizer = _check_tokenizer(folder, cfg, report)

  by_group: dict[str, list[tuple[hf_names.Entry, str | None]]] = {}
  for entry in hf_names.entries(cfg, num_labels=num_labels, task_kind=task_kind):
    by_group.setdefault(entry.group, []).append(
        (entry, _resolve_key(weights, entry.hf, family.prefix)))
  flat, used, to_init, init_groups = {}, set(), [], set()
  for group, found in by_group.items():
    absent = [e for e, key in found if key is None]
    if absent and (group in hf_names.ENCODER_GROUPS or len(absent) < len(found)):
      # The encoder is required; an optional part is all-or-nothing (half a head is damage).
      where = files[0] if len(files) == 1 else f"{folder} ({len(files)} weight files)"
      raise InteropError(f"{where}: tensor {absent[0].hf} missing (needed for mebert "
                         f"{'/'.join(absent[0].path)})")
    if absent and (cfg.family != "bert" or (not heads and group in ("mlm", "nsp"))):
      continue
    if absent:
      to_init += [e.path for e in absent]
      init_groups.add(group)
      continue
    report.groups.append(group)
    for entry, key in found:
      want = hf_names.hf_shape(entry)
      got = weights.shapes[key]
      if tuple(got) != want:
        raise InteropError(f"{weights.file_of(key)}: tensor {key} has shape {list(got)}, expected "
                           f"{list(want)} from config.json")
      flat[entry.path] = hf_names.from_hf(weights.get(key), entry).astype(cfg.storage_dtype)
      used.add(key)
  flat.update({p: v.astype(cfg.storage_dtype) for p, v in family.extra_params(cfg).items()})
  _check_tied(family, weights, flat, used)
  if to_init:
    init = hf_names.flatten(_mebert_init(cfg, init_groups, seed))
    for path in to_init:
      flat[path] = init[path]
    report.missing = ["/".join(p) for p in to_init]
  report.loaded = sorted(used)
  report.unused = sorted(k for k in weights.keys() if k not in used and not hf_names.is_buffer(k))
  if num_labels:
    report.labels = _labels(hf_cfg, num_labels)
    report.task_kind = task_kind
  params = hf_names.unflatten(flat)
  if parity:
    from mebert.interop import parity as parity_lib

    report.parity = parity_lib.check_against_folder(folder, cfg, params, report,
                                                    allow_pickle=allow_pickle)
    if report.parity is None:
      report.notes.append("parity gate skipped: torch/transformers not importable")
  if scan_layers:
    params = hf_names.stack_layers(params, cfg.num_layers)
  return cfg.replace(scan_layers=scan_layers), params, report


def _check_tokenizer(folder: str, cfg: ModelConfig, report: ImportReport) -> str | None:
  """The folder's tokenizer file, after checking it loads (a WordPiece with BERT's specials, or
  any tokenizer.json with its family's) and fits the embedding."""
  from mebert.interop.hf_tokenizer import load_folder_tokenizer

  for name in ("tokenizer.json", "vocab.txt"):
    path = os.path.join(folder, name)
    if os.path.isfile(path):
      tokenizer = load_folder_tokenizer(path)  # InteropError for e.g. a vocab without [MASK]
      if tokenizer.vocab_size > cfg.vocab_size:
        raise InteropError(f"{path}: {tokenizer.vocab_size} tokens but config.json has "
                           f"vocab_size={cfg.vocab_size}")
      return path
  report.notes.append(f"{folder}: no tokenizer.json or vocab.txt; weights only")
  return None


def _check_tied(family, weights, flat, used) -> None:
  """mebert ties the MLM decoder to the word embeddings (and its bias to the head's); an untied
  one cannot be represented."""
  for key, path in family.tied:
    if key not in weights:
      continue
    if path not in flat:
      continue  # e.g. a decoder bias without the rest of the MLM head: reported as unused
    if tuple(weights.shapes[key]) != flat[path].shape or not np.allclose(
        weights.get(key), flat[path], atol=1e-6):
      raise InteropError(f"{weights.file_of(key)}: tensor {key} differs from the tensor it is "
                         f"tied to ({'/'.join(path)}); mebert ties the MLM decoder")
    used.add(key)
