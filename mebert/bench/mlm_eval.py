"""The time-to-quality benchmark's shared pieces: one vocabulary, one way to cut documents into
examples, and one framework-neutral evaluator (mebert.bench.pretrain runs them).

  vocabulary  a WordPiece vocab.txt trained once with Hugging Face's `tokenizers` on the training
              text (BERT's uncased normaliser and pre-tokenizer, [PAD] [UNK] [CLS] [SEP] [MASK] as
              ids 0-4); mebert reads it as data.vocab, transformers as BertTokenizerFast, and both
              give the same ids (tests/bench/test_pretrain.py).
  examples    each document's tokens cut into consecutive pieces of at most seq_len - 2, each
              [CLS] piece [SEP] (the Hugging Face side's examples; the held-out set's too).
  evaluator   held-out masked-token accuracy and loss of a Hugging Face folder, through
              transformers' BertForMaskedLM: the same token sequences with the same masked
              positions (15%, 80% [MASK] / 10% random / 10% kept, drawn once with a seed and
              stored) for every checkpoint of either framework; mebert's are exported with
              `python -m mebert.interop export-hf`'s code first. Micro-averaged over predictions.
"""

from __future__ import annotations

import os

import numpy as np

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # ids 0-4, mebert's order


def read_documents(path: str) -> list[str]:
  """Documents of a file written by write_documents (a blank line between documents)."""
  with open(path, encoding="utf-8") as f:
    return [d.strip("\n") for d in f.read().split("\n\n") if d.strip()]


def write_documents(path: str, documents) -> None:
  """One document after another, a blank line between: mebert's corpus format, read back as
  the same documents since none holds a blank line (corpora.clean_document drops them)."""
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n\n".join(documents) + "\n")


def train_wordpiece(text_path: str, vocab_size: int, out_dir: str) -> str:
  """Trains an uncased WordPiece vocabulary on a text file; returns the vocab.txt path."""
  from tokenizers import BertWordPieceTokenizer  # pylint: disable=g-import-not-at-top

  tok = BertWordPieceTokenizer(clean_text=True, handle_chinese_chars=True, strip_accents=None,
                               lowercase=True)
  tok.train(files=[text_path], vocab_size=vocab_size, min_frequency=2,
            special_tokens=list(SPECIAL_TOKENS), limit_alphabet=1000, wordpieces_prefix="##",
            show_progress=False)
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, "vocab.txt")
  tok.save_model(out_dir)
  return path


def hf_tokenizer(vocab_path: str):
  """transformers' BertTokenizerFast of the vocabulary (uncased, as it was trained), loaded the
  way a user loads one: from_pretrained on its folder (transformers 5 ignores vocab_file=)."""
  from transformers import BertTokenizerFast  # pylint: disable=g-import-not-at-top

  tokenizer = BertTokenizerFast.from_pretrained(os.path.dirname(os.path.abspath(vocab_path)),
                                                do_lower_case=True, strip_accents=None)
  with open(vocab_path, encoding="utf-8") as f:
    lines = sum(1 for _ in f)
  if len(tokenizer) != lines:
    raise ValueError(f"{vocab_path}: transformers read {len(tokenizer)} tokens of {lines}")
  return tokenizer


def document_examples(documents: list[str], tokenizer, seq_len: int) -> list[list[int]]:
  """[CLS] piece [SEP] for every piece of at most seq_len - 2 tokens of every document."""
  encoded = tokenizer(list(documents), add_special_tokens=False)["input_ids"]
  cls, sep, step = tokenizer.cls_token_id, tokenizer.sep_token_id, seq_len - 2
  return [[cls] + ids[i:i + step] + [sep] for ids in encoded for i in range(0, len(ids), step)]


def build_eval_set(documents: list[str], tokenizer, seq_len: int, max_examples: int,
                   mask_prob: float = 0.15, seed: int = 0) -> dict[str, np.ndarray]:
  """The held-out set: up to max_examples examples (spread evenly over the documents' examples),
  15% of each one's non-special tokens masked BERT's way, at least one. Arrays padded to
  seq_len: input_ids, attention_mask, labels (-100 where nothing is predicted)."""
  examples = document_examples(documents, tokenizer, seq_len)
  if not examples:
    raise ValueError("the held-out text has no tokens")
  if len(examples) > max_examples:
    examples = [examples[i] for i in np.linspace(0, len(examples) - 1, max_examples).astype(int)]
  rng = np.random.default_rng(seed)
  specials = set(tokenizer.all_special_ids)
  normal_ids = np.array([i for i in range(len(tokenizer)) if i not in specials])
  n = len(examples)
  out = {"input_ids": np.zeros((n, seq_len), np.int64),
         "attention_mask": np.zeros((n, seq_len), np.int64),
         "labels": np.full((n, seq_len), -100, np.int64)}
  for r, ids in enumerate(examples):
    ids = np.asarray(ids)
    out["input_ids"][r, :len(ids)] = ids
    out["attention_mask"][r, :len(ids)] = 1
    candidates = np.flatnonzero(~np.isin(ids, list(specials)))
    if not len(candidates):
      continue
    chosen = rng.choice(candidates, max(1, int(round(mask_prob * len(candidates)))), replace=False)
    out["labels"][r, chosen] = ids[chosen]
    action = rng.random(len(chosen))
    out["input_ids"][r, chosen[action < 0.8]] = tokenizer.mask_token_id
    swap = chosen[(action >= 0.8) & (action < 0.9)]
    out["input_ids"][r, swap] = rng.choice(normal_ids, len(swap))
  return out


def evaluate_folder(folder: str, eval_set: dict[str, np.ndarray], batch_size: int = 64) -> dict:
  """Masked-token accuracy and mean loss of a Hugging Face BERT folder on the held-out set."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  torch.set_num_threads(os.cpu_count() or 1)
  # A mebert export holds a pooler and NSP head, which BertForMaskedLM does not use: no report.
  transformers.logging.set_verbosity_error()
  transformers.logging.disable_progress_bar()
  model = transformers.BertForMaskedLM.from_pretrained(folder)
  model.eval()
  lengths = eval_set["attention_mask"].sum(1)
  order = np.argsort(lengths, kind="stable")
  correct, loss_sum, count = 0, 0.0, 0
  with torch.no_grad():
    for start in range(0, len(order), batch_size):
      rows = order[start:start + batch_size]
      width = int(lengths[rows].max())
      batch = {k: torch.from_numpy(eval_set[k][rows, :width]) for k in ("input_ids",
                                                                       "attention_mask")}
      labels = torch.from_numpy(eval_set["labels"][rows, :width])
      where = labels >= 0
      hidden = model.bert(**batch).last_hidden_state[where]  # only the predicted positions
      logits = model.cls(hidden).float()
      target = labels[where]
      loss_sum += float(torch.nn.functional.cross_entropy(logits, target, reduction="sum"))
      correct += int((logits.argmax(-1) == target).sum())
      count += int(target.numel())
  return {"mlm_accuracy": correct / count, "mlm_loss": loss_sum / count, "predictions": count}
