"""The parity gate: mebert and transformers run the same real sentences; a difference fails loudly.

Every import and export calls this when torch and transformers are importable (otherwise it logs that
it skipped). Both sides run in float32 on a padded batch of varied lengths with a sentence pair, and
every output the converted weights determine is compared at real (non-padding) positions: the last
hidden state, and the pooler, MLM, NSP, ELECTRA discriminator and classifier logits when the
weights hold them, for every family (BERT, RoBERTa/XLM-R, ELECTRA, ModernBERT). mebert
runs with scanned layers (params stacked here), so the gate also checks the scan layout. Padding
rows are excluded because the two implementations need not agree there (mebert lets a padding
query attend to nothing; transformers lets it attend to the real keys), and nothing reads them.
"""

from __future__ import annotations

import functools
import logging
import os

import numpy as np

from mebert.interop import hf_names
from mebert.interop.errors import InteropError
from mebert.model.config import ModelConfig

log = logging.getLogger(__name__)

TOLERANCE = 1e-4
# Real sentences of varied lengths (public-domain books in shared/data, SST-2-style text, an accent,
# Chinese); the last row is a sentence pair, so segment (token type) embeddings are exercised.
SENTENCES = [
    ("It is a truth universally acknowledged, that a single man in possession of a good fortune, "
     "must be in want of a wife.", None),
    ("Call me Ishmael.", None),
    ("it 's a charming and often affecting journey . ", None),
    ("The café's naïve décor didn't spoil a remarkably good crème brûlée.", None),
    ("我们住的房间很干净，服务也很好。", None),
    ("How many roads must a man walk down?",
     "The answer, my friend, is blowin' in the wind."),
]
MAX_LENGTH = 48


def torch_available() -> bool:
  try:
    import torch  # noqa: F401
    import transformers  # noqa: F401
  except ImportError:
    return False
  return True


def parity_batch(tokenizer, vocab_size: int, pad_id: int = 0,
                 max_length: int = MAX_LENGTH) -> dict[str, np.ndarray]:
  """input_ids / token_type_ids / attention_mask for SENTENCES, at most `max_length` tokens a row
  (a small model's position table may be shorter than MAX_LENGTH); synthetic ids without a
  tokenizer (never `pad_id`: RoBERTa derives its position ids from where the padding id is)."""
  if tokenizer is not None:
    singles = [t for t, p in SENTENCES if p is None]
    pairs = [(t, p) for t, p in SENTENCES if p is not None]
    a = tokenizer.encode(singles, max_length=max_length, padding=None)
    b = tokenizer.encode([t for t, _ in pairs], [p for _, p in pairs], max_length=max_length,
                         padding=None)
    rows = {k: a[k] + b[k] for k in ("input_ids", "token_type_ids", "attention_mask")}
  else:  # deterministic ids in range; the same shape of batch (lengths, one pair)
    rng = np.random.default_rng(0)
    lengths = [26, 6, 12, 18, 16, 22]
    draw = lambda n: [int(i) + (i >= pad_id) for i in rng.integers(0, vocab_size - 1, n)]
    lengths = [min(n, max_length) for n in lengths]
    pair = lengths[-1]
    first = pair - 12 if pair > 12 else pair // 2  # 10 + 12 at the full length
    rows = {"input_ids": [draw(n) for n in lengths],
            "token_type_ids": [[0] * n for n in lengths[:-1]] + [[0] * first + [1] * (pair - first)],
            "attention_mask": [[1] * n for n in lengths]}
  if tokenizer is not None:
    pad_id = tokenizer.pad_id
  width = max(len(r) for r in rows["input_ids"])
  out = {}
  for key, values in rows.items():
    arr = np.full((len(values), width), pad_id if key == "input_ids" else 0, np.int32)
    for i, row in enumerate(values):
      arr[i, :len(row)] = row
    out[key] = arr
  return out


@functools.lru_cache(maxsize=8)
def _forward(cfg32: ModelConfig, task_kind: str | None, parts: frozenset):
  """The jitted mebert forward, cached: an import and the export that follows share one compile.
  parts: which of "pooler", "cls", "nsp", "rtd", "classifier" the params hold."""
  import jax

  from mebert.model.electra import DiscriminatorHead
  from mebert.model.encoder import BertModel
  from mebert.model.heads import FamilyClassifierHead
  from mebert.model.pretraining import PreTrainingHeads

  pooled = "pooler" in parts

  def forward(params, ids, types, mask):
    enc = BertModel(cfg32, add_pooling_layer=pooled).apply({"params": params["bert"]}, ids, types,
                                                           mask)
    out = {"last_hidden_state": enc.sequence_output}
    if pooled:
      out["pooler_output"] = enc.pooled_output
    if "cls" in parts:
      nsp_input = enc.pooled_output if "nsp" in parts and pooled else None
      out["mlm_logits"], nsp = PreTrainingHeads(cfg32).apply(
          {"params": params["cls"]}, enc.sequence_output, nsp_input, enc.word_embeddings)
      if nsp is not None:
        out["nsp_logits"] = nsp
    if "rtd" in parts:
      out["rtd_logits"] = DiscriminatorHead(cfg32).apply(
          {"params": params["discriminator_predictions"]}, enc.sequence_output)
    if "classifier" in parts:
      kind = task_kind or "classification"
      if cfg32.family == "bert":
        k, b = params["classifier"]["kernel"], params["classifier"]["bias"]
        x = enc.sequence_output if kind == "token_classification" else enc.pooled_output
        out["classifier_logits"] = x @ k + b
      else:
        n = params["classifier"].get("out_proj", params["classifier"])["bias"].shape[0]
        out["classifier_logits"] = FamilyClassifierHead(cfg32, kind, n, 0.0).apply(
            {"params": params["classifier"]}, enc, mask)
    return out

  return jax.jit(forward)


def mebert_outputs(cfg: ModelConfig, params: dict, batch: dict, *, task_kind: str | None,
                   groups: list[str] | None = None) -> dict:
  """The outputs the params determine (of `groups` only, when given: an ELECTRA pretraining tree
  exports its discriminator, not the generator's head), computed by mebert in float32 at full
  matmul precision."""
  import jax

  # Scanned layers: one compiled layer body, so the gate compiles fast even for deep models.
  cfg32 = cfg.replace(dtype="float32", param_dtype="float32", attention_backend="xla",
                      remat_policy="none", scan_layers=True)
  params = {k: v for k, v in params.items()
            if k in ("bert", "cls", "classifier", "discriminator_predictions")}
  params = jax.tree.map(lambda x: np.asarray(x, np.float32), params)
  if not hf_names.is_stacked(params):
    params = hf_names.stack_layers(params, cfg.num_layers)
  parts = {"cls", "classifier"} & set(params)
  if "pooler" in params["bert"]:
    parts.add("pooler")
  if "cls" in params and "seq_relationship" in params["cls"]:
    parts.add("nsp")
  if "discriminator_predictions" in params:
    parts.add("rtd")
  if groups is not None:
    parts &= {{"mlm": "cls"}.get(g, g) for g in groups}
  forward = _forward(cfg32, task_kind, frozenset(parts))
  with jax.default_matmul_precision("highest"):
    out = forward(params, batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
  return jax.tree.map(np.asarray, out)


def hf_outputs(folder: str, architecture: str, batch: dict, prefix: str = "bert") -> dict:
  """The same outputs from transformers, loading `folder` as `architecture` (eager attention)."""
  import torch
  import transformers

  cls = getattr(transformers, architecture)
  verbosity = transformers.logging.get_verbosity()
  transformers.logging.set_verbosity_error()  # heads we do not compare may be freshly initialised
  try:
    model = cls.from_pretrained(folder, attn_implementation="eager", dtype=torch.float32)
  finally:
    transformers.logging.set_verbosity(verbosity)
  model.eval()
  inputs = {k: torch.from_numpy(np.asarray(v, np.int64)) for k, v in batch.items()}
  if architecture.startswith("ModernBert"):  # no token types
    inputs.pop("token_type_ids")
  out = {}
  with torch.no_grad():
    base = getattr(model, prefix, model)
    enc = base(**inputs)
    out["last_hidden_state"] = enc.last_hidden_state.numpy()
    if getattr(enc, "pooler_output", None) is not None:
      out["pooler_output"] = enc.pooler_output.numpy()
    if base is not model:
      full = model(**inputs)
      if architecture == "BertForPreTraining":
        out["mlm_logits"] = full.prediction_logits.numpy()
        out["nsp_logits"] = full.seq_relationship_logits.numpy()
      elif architecture == "ElectraForPreTraining":
        out["rtd_logits"] = full.logits.numpy()
      elif architecture.endswith("ForMaskedLM"):
        out["mlm_logits"] = full.logits.numpy()
      else:
        out["classifier_logits"] = full.logits.numpy()
  return out


def compare(ours: dict, theirs: dict, mask: np.ndarray, names: list[str], *, where: str,
            tol: float = TOLERANCE) -> dict[str, float]:
  real = mask.astype(bool)
  diffs = {}
  for name in names:
    a, b = np.asarray(ours[name], np.float64), np.asarray(theirs[name], np.float64)
    if a.shape != b.shape:
      raise InteropError(f"parity gate ({where}): {name} has shape {a.shape} in mebert, "
                         f"{b.shape} in transformers")
    diff = np.abs(a - b)
    if diff.ndim >= 2 and diff.shape[:2] == real.shape:  # per-token outputs: real positions only
      diff = diff[real]
    diffs[name] = float(diff.max())
  bad = {k: v for k, v in diffs.items() if not v <= tol}
  if bad:
    raise InteropError(f"parity gate ({where}): max abs difference above {tol:g} for "
                       + ", ".join(f"{k}={v:.3g}" for k, v in bad.items()))
  return diffs


def _role(groups: list[str], task_kind: str | None, family) -> str:
  if "classifier" in groups:
    return task_kind if task_kind == "token_classification" else "classification"
  if "rtd" in groups:
    return "pretraining"
  if "mlm" in groups:
    return "pretraining" if "nsp" in groups and family.name == "bert" else "mlm"
  return "base"


def _names(groups: list[str], role: str, family) -> list[str]:
  names = ["last_hidden_state"]
  if "pooler" in groups and role != "token_classification":
    names.append("pooler_output")
  if "mlm" in groups:
    names.append("mlm_logits")
  if "nsp" in groups and "pooler" in groups:
    names.append("nsp_logits")
  if "rtd" in groups:
    names.append("rtd_logits")
  needs_pooler = family.name == "bert" and role == "classification"
  if "classifier" in groups and (not needs_pooler or "pooler" in groups):
    names.append("classifier_logits")
  return names


def run_gate(folder: str, cfg: ModelConfig, params: dict, *, groups: list[str],
             task_kind: str | None, tokenizer, where: str) -> dict[str, float] | None:
  """Loads `folder` with transformers, runs both models, returns {output: max abs diff}; raises
  InteropError above the tolerance; None (and a log line) when torch is not importable."""
  from mebert.interop import hf_config, hf_families

  if not torch_available():
    log.info("parity gate (%s) skipped: torch/transformers not importable", where)
    return None
  family = hf_families.family(cfg.family)
  role = _role(groups, task_kind, family)
  architecture = family.classes[role]
  if hf_config.read_hf_config(folder).get("model_type") == "xlm-roberta":
    architecture = architecture.replace("Roberta", "XLMRoberta")
  longest = MAX_LENGTH
  if cfg.position_encoding == "learned":  # the table's rows past the offset
    longest = min(longest, cfg.max_position_embeddings - cfg.position_offset)
  batch = parity_batch(tokenizer, cfg.vocab_size, cfg.pad_token_id, longest)
  if not cfg.use_segment_embeddings or cfg.type_vocab_size == 1:
    batch["token_type_ids"] = np.zeros_like(batch["token_type_ids"])
  theirs = hf_outputs(folder, architecture, batch, family.prefix)
  ours = mebert_outputs(cfg, params, batch, task_kind=task_kind, groups=groups)
  names = [n for n in _names(groups, role, family) if n in theirs]
  diffs = compare(ours, theirs, batch["attention_mask"], names, where=where)
  log.info("parity gate (%s): %s", where, ", ".join(f"{k}={v:.2e}" for k, v in diffs.items()))
  return diffs


def check_against_folder(folder: str, cfg: ModelConfig, params: dict, report,
                         allow_pickle: bool = False) -> dict[str, float] | None:
  """Import side: the folder as transformers reads it vs the params mebert made of it."""
  from mebert.interop.hf_tokenizer import load_folder_tokenizer

  del allow_pickle  # transformers reads a .bin with torch.load(weights_only=True) itself
  tokenizer = load_folder_tokenizer(report.tokenizer) if report.tokenizer else None
  where = f"import {os.path.basename(os.path.normpath(folder))}"
  return run_gate(folder, cfg, params, groups=report.groups, task_kind=report.task_kind,
                  tokenizer=tokenizer, where=where)
