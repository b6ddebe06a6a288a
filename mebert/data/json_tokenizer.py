"""The pretraining pipeline's tokenizer for a non-WordPiece tokenizer.json: RoBERTa's byte-level BPE
(<s> </s> <pad> <unk> <mask>), XLM-R's sentencepiece unigram, ModernBERT's BPE ([CLS] [SEP] ...).

The pipeline builds rows itself ([CLS]/<s> A [SEP]/</s>, see mebert.data.instances), so only the
bare tokens, the five special ids and which tokens begin a word (whole-word masking) come from the
file: byte-level BPE marks a word start with "Ġ" (the encoded space), sentencepiece with "▁".
"""

from __future__ import annotations

import numpy as np

from mebert.data.tokenizer import SPECIAL_TOKENS, TokenizersBacked

# Per role (pad, unk, cls, sep, mask): BERT's name, then RoBERTa/XLM-R's.
SPECIAL_CANDIDATES = (("[PAD]", "<pad>"), ("[UNK]", "<unk>"), ("[CLS]", "<s>"), ("[SEP]", "</s>"),
                      ("[MASK]", "<mask>"))
WORD_START_MARKS = ("\u0120", "\u2581")  # "Ġ" (byte-level BPE), "▁" (sentencepiece)


class JsonTokenizer(TokenizersBacked):
  """A tokenizers tokenizer.json of any model type, with BERT's or RoBERTa's special names."""

  def __init__(self, tok, path: str):
    self.path = path
    self._tok = tok
    vocab = tok.get_vocab(with_added_tokens=True)
    self.vocab_size = max(vocab.values()) + 1
    names = [next((c for c in candidates if c in vocab), None) for candidates in SPECIAL_CANDIDATES]
    missing = [c[0] + "/" + c[1] for c, n in zip(SPECIAL_CANDIDATES, names) if n is None]
    if missing:
      raise ValueError(f"{path}: vocabulary has no {missing[0]} token (needs pad, unk, cls, sep and "
                       "mask tokens, named as BERT's or RoBERTa's)")
    found = dict(zip(SPECIAL_TOKENS, names))  # BERT's name -> this vocabulary's
    self._set_specials(lambda t: vocab[found[t]])
    self._tokens = [""] * self.vocab_size
    for token, i in vocab.items():
      self._tokens[i] = token
    marked = any(t.startswith(WORD_START_MARKS) for t in self._tokens)
    self.word_start = np.array([t.startswith(WORD_START_MARKS) or not marked
                                for t in self._tokens], bool)
    self.word_start[self.special_ids] = True
    # Pretokenizers without a space mark (a plain BPE) leave every token a word start: whole-word
    # masking then masks single tokens, as without it.
