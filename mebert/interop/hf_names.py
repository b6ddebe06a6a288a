"""The parameter-name map between mebert (Flax) and Hugging Face (PyTorch), both directions.

mebert's parameter paths mirror Hugging Face BERT's module names (see mebert.model.encoder), so the
map is mechanical: dots become path segments, `weight` becomes `kernel` (transposed: torch Linear
stores [out, in], Flax Dense [in, out]), `embedding` or `scale`. Keys here are *canonical*: the
encoder keys carry the base-model prefix of the task models (`bert.` in `BertForPreTraining`,
`roberta.`, `electra.`, ModernBERT's `model.`); a bare base-model file has the same keys without
it. mebert keeps every family's encoder under "bert"; the other families' tables, and their
differences (ModernBERT's fused Wqkv and half-rotated heads), are in mebert.interop.hf_families.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import numpy as np

from mebert.model.layout import is_stacked, stack_layers, unstack_layers  # noqa: F401

# Groups of parameters; a folder either has a whole group or none of it.
ENCODER_GROUPS = ("embeddings", "layer")  # required on import
# Initialised (and reported) when absent; "rtd" is ELECTRA's discriminator head.
OPTIONAL_GROUPS = ("pooler", "mlm", "nsp", "classifier", "rtd")


@dataclasses.dataclass(frozen=True)
class Entry:
  """One mebert parameter and the Hugging Face tensor (or slice of one) it comes from."""

  path: tuple[str, ...]  # mebert path in the unrolled (scan_layers=False) tree
  hf: str  # canonical Hugging Face key
  transpose: bool  # a Dense kernel: HF stores weight = kernel.T
  group: str
  shape: tuple[int, ...] = ()  # the mebert shape ((in, out) for a kernel)
  # (index, count): the HF tensor stacks `count` mebert tensors along its first axis (ModernBERT's
  # fused Wqkv); this entry is the index-th of them.
  part: tuple[int, int] | None = None
  # > 0: the HF rows (output features) of these heads rotate in halves (x[i], x[i + D/2]) where
  # mebert rotates interleaved pairs (x[2i], x[2i + 1]): the rows are permuted on the way.
  rotary_heads: int = 0


def dense(path, hf, group, shape, bias=True):
  """A Dense: kernel [in, out] <-> HF weight [out, in], and its bias."""
  yield Entry(path + ("kernel",), hf + ".weight", True, group, tuple(shape))
  if bias:
    yield Entry(path + ("bias",), hf + ".bias", False, group, (shape[1],))


def layer_norm(path, hf, group, width, bias=True):
  yield Entry(path + ("scale",), hf + ".weight", False, group, (width,))
  if bias:
    yield Entry(path + ("bias",), hf + ".bias", False, group, (width,))


def entries(cfg, *, num_labels: int | None = None, task_kind: str | None = None) -> list[Entry]:
  """Every mapped tensor of the family's pretraining model, plus a classifier when num_labels is
  given (its layout follows task_kind for the families whose heads differ by kind)."""
  from mebert.interop import hf_families  # the families' tables build on this module

  return list(hf_families.family(cfg.family).entries(cfg, num_labels, task_kind))


def bert_encoder(cfg, prefix: str) -> Iterator[Entry]:
  """BertModel's embeddings and layers (BERT, RoBERTa, ELECTRA) under `prefix`."""
  h, i, e = cfg.hidden_size, cfg.intermediate_size, cfg.embedding_width
  emb = ("bert", "embeddings")
  rows = {"word_embeddings": cfg.vocab_size, "position_embeddings": cfg.max_position_embeddings,
          "token_type_embeddings": cfg.type_vocab_size}
  for name, n in rows.items():
    yield Entry(emb + (name, "embedding"), f"{prefix}.embeddings.{name}.weight", False,
                "embeddings", (n, e))
  yield from layer_norm(emb + ("LayerNorm",), f"{prefix}.embeddings.LayerNorm", "embeddings", e)
  if e != h:
    yield from dense(("bert", "embeddings_project"), f"{prefix}.embeddings_project", "embeddings",
                     (e, h))
  for n in range(cfg.num_layers):
    p, k = ("bert", "encoder", f"layer_{n}"), f"{prefix}.encoder.layer.{n}"
    for name in ("query", "key", "value"):
      yield from dense(p + ("attention", "self", name), f"{k}.attention.self.{name}", "layer", (h, h))
    yield from dense(p + ("attention", "output", "dense"), f"{k}.attention.output.dense", "layer",
                     (h, h))
    yield from layer_norm(p + ("attention", "output", "LayerNorm"),
                          f"{k}.attention.output.LayerNorm", "layer", h)
    yield from dense(p + ("intermediate", "dense"), f"{k}.intermediate.dense", "layer", (h, i))
    yield from dense(p + ("output", "dense"), f"{k}.output.dense", "layer", (i, h))
    yield from layer_norm(p + ("output", "LayerNorm"), f"{k}.output.LayerNorm", "layer", h)


def bert_entries(cfg, num_labels: int | None, task_kind: str | None) -> Iterator[Entry]:
  """BertForPreTraining (+ BertForSequence/TokenClassification's classifier)."""
  del task_kind
  h = cfg.hidden_size
  yield from bert_encoder(cfg, "bert")
  yield from dense(("bert", "pooler", "dense"), "bert.pooler.dense", "pooler", (h, h))
  yield Entry(("cls", "predictions", "bias"), "cls.predictions.bias", False, "mlm",
              (cfg.vocab_size,))
  yield from dense(("cls", "predictions", "transform", "dense"), "cls.predictions.transform.dense",
                   "mlm", (h, cfg.embedding_width))
  yield from layer_norm(("cls", "predictions", "transform", "LayerNorm"),
                        "cls.predictions.transform.LayerNorm", "mlm", cfg.embedding_width)
  yield from dense(("cls", "seq_relationship"), "cls.seq_relationship", "nsp", (h, 2))
  if num_labels is not None:
    yield from dense(("classifier",), "classifier", "classifier", (h, num_labels))


# Keys that a Hugging Face file may hold and that carry nothing mebert needs: a buffer, and the MLM
# decoder, which both sides tie to the word embeddings and the output bias (checked on import).
TIED_DECODER_WEIGHT = "cls.predictions.decoder.weight"
TIED_DECODER_BIAS = "cls.predictions.decoder.bias"
BUFFER_SUFFIXES = ("embeddings.position_ids", "embeddings.token_type_ids")


def is_buffer(key: str) -> bool:
  return key.endswith(BUFFER_SUFFIXES)


def hf_aliases(canonical: str, prefix: str = "bert") -> tuple[str, ...]:
  """Spellings of one key across checkpoint vintages: without the base model's `prefix.` (a bare
  BertModel/RobertaModel/... file), and LayerNorm.gamma/beta for LayerNorm.weight/bias."""
  bare = canonical[len(prefix) + 1:] if canonical.startswith(prefix + ".") else None
  names = [canonical] + ([bare] if bare else [])
  old = []
  for n in names:
    if ".LayerNorm.weight" in n:
      old.append(n.replace(".LayerNorm.weight", ".LayerNorm.gamma"))
    elif ".LayerNorm.bias" in n:
      old.append(n.replace(".LayerNorm.bias", ".LayerNorm.beta"))
  return tuple(names + old)


def get_path(tree: dict, path: tuple[str, ...]):
  for key in path:
    tree = tree[key]
  return tree


def has_path(tree: dict, path: tuple[str, ...]) -> bool:
  for key in path:
    if not isinstance(tree, dict) or key not in tree:
      return False
    tree = tree[key]
  return True


def set_path(tree: dict, path: tuple[str, ...], value) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def flatten(tree: dict, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], object]:
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(flatten(value, prefix + (key,)))
    else:
      out[prefix + (key,)] = value
  return out


def unflatten(flat: dict[tuple[str, ...], object]) -> dict:
  tree: dict = {}
  for path, value in flat.items():
    set_path(tree, path, value)
  return tree


def _rotary_rows(heads: int, rows: int) -> np.ndarray:
  """mebert row r of a rotated projection = HF row perm[r]: per head, pairs (2i, 2i+1) <- (i, i+D/2)."""
  dim = rows // heads
  half = np.arange(dim // 2)
  per_head = np.stack([half, half + dim // 2], axis=-1).reshape(dim)
  return (np.arange(heads)[:, None] * dim + per_head[None, :]).reshape(rows)


def from_hf(value: np.ndarray, entry: Entry) -> np.ndarray:
  """The mebert tensor of `entry` from the whole HF tensor."""
  value = np.asarray(value)
  if entry.part is not None:
    index, count = entry.part
    value = np.split(value, count, axis=0)[index]
  if entry.rotary_heads:
    value = value[_rotary_rows(entry.rotary_heads, value.shape[0])]
  return np.ascontiguousarray(value.T) if entry.transpose else value


def to_hf(value: np.ndarray, entry: Entry) -> np.ndarray:
  """The HF tensor (or, for a `part`, its slice) of `entry`; export concatenates the parts."""
  value = np.asarray(value)
  value = np.ascontiguousarray(value.T) if entry.transpose else value
  if entry.rotary_heads:
    value = value[np.argsort(_rotary_rows(entry.rotary_heads, value.shape[0]))]
  return value


def hf_shape(entry: Entry) -> tuple[int, ...]:
  """The shape of the whole HF tensor the entry reads."""
  shape = tuple(reversed(entry.shape)) if entry.transpose else tuple(entry.shape)
  if entry.part is not None:
    shape = (shape[0] * entry.part[1],) + shape[1:]
  return shape
