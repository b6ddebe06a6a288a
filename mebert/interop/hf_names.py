"""The parameter-name map between mebert (Flax) and Hugging Face BERT (PyTorch), both directions.

mebert's parameter paths mirror Hugging Face's module names (see mebert.model.encoder), so the map
is mechanical: dots become path segments, `weight` becomes `kernel` (transposed: torch Linear stores
[out, in], Flax Dense [in, out]), `embedding` or `scale`. Keys here are *canonical*: the encoder
keys carry the `bert.` prefix of the task models (`BertForPreTraining`, `...ForSequenceClassification`);
a bare `BertModel` file has the same keys without it.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import numpy as np

# Groups of parameters; a folder either has a whole group or none of it.
ENCODER_GROUPS = ("embeddings", "layer")  # required on import
OPTIONAL_GROUPS = ("pooler", "mlm", "nsp", "classifier")  # initialised (and reported) when absent


@dataclasses.dataclass(frozen=True)
class Entry:
  path: tuple[str, ...]  # mebert path in the unrolled (scan_layers=False) tree
  hf: str  # canonical Hugging Face key
  transpose: bool  # a Dense kernel: HF stores weight = kernel.T
  group: str


def _dense(path, hf, group):
  yield Entry(path + ("kernel",), hf + ".weight", True, group)
  yield Entry(path + ("bias",), hf + ".bias", False, group)


def _layer_norm(path, hf, group):
  yield Entry(path + ("scale",), hf + ".weight", False, group)
  yield Entry(path + ("bias",), hf + ".bias", False, group)


def entries(num_layers: int, *, num_labels: int | None = None) -> list[Entry]:
  """Every mapped tensor of BertForPreTraining (+ a classifier when num_labels is given)."""
  return list(_entries(num_layers, num_labels))


def _entries(num_layers: int, num_labels: int | None) -> Iterator[Entry]:
  emb = ("bert", "embeddings")
  for name in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
    yield Entry(emb + (name, "embedding"), f"bert.embeddings.{name}.weight", False, "embeddings")
  yield from _layer_norm(emb + ("LayerNorm",), "bert.embeddings.LayerNorm", "embeddings")
  for i in range(num_layers):
    p, h = ("bert", "encoder", f"layer_{i}"), f"bert.encoder.layer.{i}"
    for name in ("query", "key", "value"):
      yield from _dense(p + ("attention", "self", name), f"{h}.attention.self.{name}", "layer")
    yield from _dense(p + ("attention", "output", "dense"), f"{h}.attention.output.dense", "layer")
    yield from _layer_norm(p + ("attention", "output", "LayerNorm"),
                           f"{h}.attention.output.LayerNorm", "layer")
    yield from _dense(p + ("intermediate", "dense"), f"{h}.intermediate.dense", "layer")
    yield from _dense(p + ("output", "dense"), f"{h}.output.dense", "layer")
    yield from _layer_norm(p + ("output", "LayerNorm"), f"{h}.output.LayerNorm", "layer")
  yield from _dense(("bert", "pooler", "dense"), "bert.pooler.dense", "pooler")
  yield Entry(("cls", "predictions", "bias"), "cls.predictions.bias", False, "mlm")
  yield from _dense(("cls", "predictions", "transform", "dense"),
                    "cls.predictions.transform.dense", "mlm")
  yield from _layer_norm(("cls", "predictions", "transform", "LayerNorm"),
                         "cls.predictions.transform.LayerNorm", "mlm")
  yield from _dense(("cls", "seq_relationship"), "cls.seq_relationship", "nsp")
  if num_labels is not None:
    yield from _dense(("classifier",), "classifier", "classifier")


# Keys that a Hugging Face file may hold and that carry nothing mebert needs: a buffer, and the MLM
# decoder, which both sides tie to the word embeddings and the output bias (checked on import).
TIED_DECODER_WEIGHT = "cls.predictions.decoder.weight"
TIED_DECODER_BIAS = "cls.predictions.decoder.bias"
BUFFERS = ("bert.embeddings.position_ids", "embeddings.position_ids")


def hf_aliases(canonical: str) -> tuple[str, ...]:
  """Spellings of one key across checkpoint vintages: no `bert.` prefix, LayerNorm.gamma/beta."""
  bare = canonical[len("bert."):] if canonical.startswith("bert.") else None
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


def is_stacked(params: dict) -> bool:
  """True for a scan_layers tree (bert/encoder/layer with a leading [num_layers] axis)."""
  return has_path(params, ("bert", "encoder", "layer"))


def stack_layers(params: dict, num_layers: int) -> dict:
  """Unrolled layer_<i> subtrees -> one `layer` subtree whose leaves gain a leading layer axis."""
  encoder = params["bert"]["encoder"]
  flat = [flatten(encoder[f"layer_{i}"]) for i in range(num_layers)]
  stacked = unflatten({k: np.stack([np.asarray(f[k]) for f in flat]) for k in flat[0]})
  rest = {k: v for k, v in encoder.items() if not k.startswith("layer_")}
  return {**params, "bert": {**params["bert"], "encoder": {**rest, "layer": stacked}}}


def unstack_layers(params: dict) -> dict:
  """The inverse of stack_layers: one `layer` subtree -> layer_<i> subtrees."""
  encoder = params["bert"]["encoder"]
  flat = flatten(encoder["layer"])
  num_layers = next(iter(flat.values())).shape[0]
  layers = {f"layer_{i}": unflatten({k: np.asarray(v)[i] for k, v in flat.items()})
            for i in range(num_layers)}
  rest = {k: v for k, v in encoder.items() if k != "layer"}
  return {**params, "bert": {**params["bert"], "encoder": {**rest, **layers}}}


def to_hf(value: np.ndarray, entry: Entry) -> np.ndarray:
  value = np.asarray(value)
  return np.ascontiguousarray(value.T) if entry.transpose else value


def from_hf(value: np.ndarray, entry: Entry) -> np.ndarray:
  return np.ascontiguousarray(value.T) if entry.transpose else np.asarray(value)


def hf_shape(mebert_shape: tuple[int, ...], entry: Entry) -> tuple[int, ...]:
  return tuple(reversed(mebert_shape)) if entry.transpose else tuple(mebert_shape)
