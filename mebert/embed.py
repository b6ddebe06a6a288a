"""Sentence embeddings from a mebert workdir or a Hugging Face BERT folder.

  python -m mebert.embed --model=WORKDIR_OR_HF_DIR --input=FILE --output=FILE.npy \
      [--column=NAME_OR_INDEX] [--pooling=cls|mean|max] [--layers=-1 | 0,-1] [--normalize] \
      [--batch_size=64] [--max_length=N] [--quantize=int8]

Input is a text file with one sentence per line, or a TSV/CSV (by suffix) read with --column
(a header name, or a 0-based index; --no-header when the file has none). Sentences are sorted by
length and batched, each batch padded to a multiple of 8 of its longest row (and to batch_size
rows), so padding stays small and at most max_length/8 shapes are compiled; the output rows are in
input order. --layers concatenates the pooled outputs of several layers (0 = the embedding layer's
output): the "multiple encodings" representation. --normalize L2-normalises the final vector, as
sentence-transformers' Normalize module does. --quantize=int8 keeps the weights as int8 with one
scale per output channel (embedding tables per row), dequantized inside the jitted forward pass
(mebert.compress.quantize): about a quarter of the fp32 weight bytes.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import functools
import json
import os
import sys

import numpy as np

from mebert import host_memory
from mebert.model.config import ModelConfig

POOLINGS = ("cls", "mean", "max")


@dataclasses.dataclass
class Encoder:
  cfg: ModelConfig
  params: dict  # BertModel params (unrolled layers)
  tokenize: object  # list[str], max_length -> (list of id rows, list of type rows)
  max_length: int


def _wordpiece_tokenize(tokenizer):
  def tokenize(texts, max_length):
    enc = tokenizer.encode(texts, max_length=max_length, padding=None)
    return enc["input_ids"], enc["token_type_ids"]
  return tokenize


def _pipeline_tokenize(tokenizer):
  """mebert.data's tokenizers (e.g. sentencepiece) give ids without specials: add [CLS]/[SEP]."""
  def tokenize(texts, max_length):
    rows = [[tokenizer.cls_id] + ids[:max_length - 2] + [tokenizer.sep_id]
            for ids in tokenizer.encode_batch(list(texts))]
    return rows, [[0] * len(r) for r in rows]
  return tokenize


def load_encoder(path: str, *, dtype: str = "float32", parity: bool = False) -> Encoder:
  """A Hugging Face folder (config.json) or a mebert workdir (checkpoints/) -> Encoder."""
  from mebert.interop import hf_names
  from mebert.interop.errors import InteropError
  from mebert.interop.hf_tokenizer import load_folder_tokenizer

  if os.path.isfile(os.path.join(path, "config.json")):
    from mebert.interop.hf_import import load_hf_bert

    cfg, params, report = load_hf_bert(path, parity=parity, heads=False, dtype=dtype)
    if report.tokenizer is None:
      raise InteropError(f"{path}: no tokenizer.json or vocab.txt to tokenize the input with")
    max_length = cfg.max_position_embeddings
    st_config = os.path.join(path, "sentence_bert_config.json")
    if os.path.isfile(st_config):  # sentence-transformers' own truncation length
      with open(st_config, encoding="utf-8") as f:
        max_length = int(json.load(f).get("max_seq_length") or max_length)
    # WordPiece for BERT's vocabularies, the folder's own tokenizer.json for the other families.
    return Encoder(cfg, params["bert"], _wordpiece_tokenize(load_folder_tokenizer(report.tokenizer)),
                   max_length)
  if not os.path.isdir(os.path.join(path, "checkpoints")):
    raise InteropError(f"{path}: neither a Hugging Face folder (config.json) nor a mebert workdir "
                       "(checkpoints/)")
  from mebert.model.layout import normalize_params
  from mebert.train.checkpoints import CheckpointError, restore_params

  try:
    params, config_dict = restore_params(path)
  except CheckpointError as e:
    raise InteropError(str(e)) from None
  params = normalize_params(params)
  table = hf_names.get_path(params, ("bert", "embeddings", "word_embeddings", "embedding"))
  cfg = ModelConfig.from_dict(config_dict["model"], vocab_size=int(table.shape[0])).replace(
      scan_layers=False, remat_policy="none", dtype=dtype)
  data = config_dict.get("data") or {}
  vocab = data.get("vocab")
  if not vocab:
    raise InteropError(f"{path}: checkpoint config has no data.vocab to tokenize the input with")
  if vocab.endswith(".model"):
    from mebert.data.tokenizer import load_tokenizer

    tokenize = _pipeline_tokenize(load_tokenizer(vocab))
  else:
    tokenize = _wordpiece_tokenize(load_folder_tokenizer(vocab,
                                                         lowercase=data.get("lowercase", True)))
  return Encoder(cfg, params["bert"], tokenize, cfg.max_position_embeddings)


def read_sentences(path: str, column: str | None = None, header: bool = True) -> list[str]:
  """One sentence per line, or one column of a TSV/CSV (GLUE TSVs are unquoted: QUOTE_NONE)."""
  with open(path, encoding="utf-8-sig", newline="" if column is not None else None) as f:
    if column is None:
      return [line.rstrip("\r\n") for line in f]
    tsv = path.endswith((".tsv", ".tab"))
    reader = csv.reader(f, delimiter="\t" if tsv else ",",
                        quoting=csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL)
    rows = list(reader)
  names = rows[0] if header and rows else []
  if column.lstrip("-").isdigit():
    index = int(column)
  elif column in names:
    index = names.index(column)
  else:
    raise ValueError(f"{path}: no column {column!r} (header: {names})")
  body = rows[1:] if header else rows
  bad = next((i for i, r in enumerate(body) if len(r) <= index), None)
  if bad is not None:
    raise ValueError(f"{path}: row {bad + 1 + header} has no column {column!r}")
  return [r[index] for r in body]


@functools.lru_cache(maxsize=16)
def _embed_fn(cfg: ModelConfig, pooling: str, layers: tuple[int, ...], normalize: bool,
              quantized: bool = False):
  import jax
  import jax.numpy as jnp

  from mebert.model import int8 as quantize_lib
  from mebert.model.encoder import BertModel

  model = BertModel(cfg, add_pooling_layer=False)  # embeddings pool the tokens themselves
  need_all = layers != (-1,)

  def embed(params, ids, types, mask):
    out = model.apply({"params": params}, ids, types, mask, return_hidden_states=need_all)
    states = [out.hidden_states[i] for i in layers] if need_all else [out.sequence_output]
    m = mask[..., None].astype(jnp.float32)
    pooled = []
    for h in states:
      h = h.astype(jnp.float32)
      if pooling == "cls":
        pooled.append(h[:, 0])
      elif pooling == "mean":  # over real tokens, [CLS]/[SEP] included, as sentence-transformers
        pooled.append((h * m).sum(1) / jnp.maximum(m.sum(1), 1.0))
      else:
        pooled.append(jnp.where(m > 0, h, jnp.finfo(jnp.float32).min).max(1))
    v = jnp.concatenate(pooled, axis=-1)
    if normalize:
      v = v / jnp.maximum(jnp.linalg.norm(v, axis=-1, keepdims=True), 1e-12)
    return v

  if quantized:  # int8 weights in, dequantized to the compute dtype inside the trace
    embed = quantize_lib.dequantizing(embed, cfg.compute_dtype)
  return jax.jit(embed)  # one compile per (batch_size, padded length) bucket shape


def embed_sentences(encoder: Encoder, sentences: list[str], *, pooling: str = "mean",
                    layers: tuple[int, ...] = (-1,), normalize: bool = False,
                    batch_size: int = 64, max_length: int | None = None,
                    progress: bool = True, quantize: str = "none") -> np.ndarray:
  """[N, hidden * len(layers)] float32, rows in input order. quantize="int8": int8 weights."""
  import jax
  from tqdm import tqdm

  from mebert.model import int8 as quantize_lib
  from mebert.interop import hf_names

  cfg = encoder.cfg
  quantized = quantize_lib.check_mode(quantize) == "int8"
  if pooling not in POOLINGS:
    raise ValueError(f"pooling={pooling!r} is not one of {POOLINGS}")
  for i in layers:
    if not -(cfg.num_layers + 1) <= i <= cfg.num_layers:
      raise ValueError(f"layer {i} out of range: 0..{cfg.num_layers} (0 = embeddings) or negative")
  max_length = min(max_length or encoder.max_length, cfg.max_position_embeddings)
  ids, types = encoder.tokenize(sentences, max_length)
  lengths = np.array([len(r) for r in ids])
  order = np.argsort(lengths, kind="stable")
  params = {"bert": jax.tree.map(lambda x: np.asarray(x, cfg.storage_dtype), encoder.params)}
  if tuple(layers) == (-1,):  # only the last layer: scan them, one layer body to compile
    cfg = cfg.replace(scan_layers=True)
    params = hf_names.stack_layers(params, cfg.num_layers)
  fn = _embed_fn(cfg, pooling, tuple(layers), normalize, quantized)
  params = params["bert"]
  if quantized:
    params = quantize_lib.quantize_params(params)
    if progress:
      print(quantize_lib.describe(quantize_lib.report(params), "int8 encoder weights"),
            file=sys.stderr)
  params = jax.device_put(params)
  out = np.zeros((len(sentences), cfg.hidden_size * len(layers)), np.float32)
  bar = tqdm(total=len(sentences), unit="sent", file=sys.stderr, disable=not progress)
  for start in range(0, len(order), batch_size):
    rows = order[start:start + batch_size]
    width = min(-(-int(lengths[rows].max()) // 8) * 8, cfg.max_position_embeddings)
    batch = np.zeros((3, batch_size, width), np.int32)  # ids, types, mask; padded rows stay 0
    for j, r in enumerate(rows):
      n = lengths[r]
      batch[0, j, :n], batch[1, j, :n], batch[2, j, :n] = ids[r], types[r], 1
    out[rows] = np.asarray(fn(params, *batch))[:len(rows)]
    bar.update(len(rows))
  bar.close()
  return out


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(prog="python -m mebert.embed", description=__doc__.split("\n")[0])
  ap.add_argument("--model", required=True, help="mebert workdir or Hugging Face BERT folder")
  ap.add_argument("--input", required=True)
  ap.add_argument("--output", required=True, help=".npy file to write")
  ap.add_argument("--column", default=None, help="TSV/CSV column: header name or 0-based index")
  ap.add_argument("--header", action=argparse.BooleanOptionalAction, default=True,
                  help="the TSV/CSV has a header row")
  ap.add_argument("--pooling", choices=POOLINGS, default="mean")
  ap.add_argument("--layers", default="-1", help="comma list of layers; 0 = embedding output")
  ap.add_argument("--normalize", action="store_true")
  ap.add_argument("--batch_size", type=int, default=64)
  ap.add_argument("--max_length", type=int, default=None,
                  help="default: sentence_bert_config.json's max_seq_length, else the model's")
  ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  ap.add_argument("--quantize", default="none", choices=("none", "int8"),
                  help="int8: per-channel int8 weights, dequantized inside the forward pass")
  ap.add_argument("--parity", action="store_true",
                  help="run the transformers parity gate when loading a Hugging Face folder")
  args = ap.parse_args(argv)
  host_memory.configure()  # before JAX starts: the opt-in host tuning (mebert/host_memory.py)
  from mebert.interop.errors import InteropError

  try:
    layers = tuple(int(x) for x in args.layers.split(","))
    sentences = read_sentences(args.input, args.column, args.header)
    encoder = load_encoder(args.model, dtype=args.dtype, parity=args.parity)
    vectors = embed_sentences(encoder, sentences, pooling=args.pooling, layers=layers,
                              normalize=args.normalize, batch_size=args.batch_size,
                              max_length=args.max_length, quantize=args.quantize)
  except (InteropError, ValueError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  np.save(args.output, vectors)
  print(f"wrote {vectors.shape[0]} x {vectors.shape[1]} embeddings to {args.output}",
        file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
