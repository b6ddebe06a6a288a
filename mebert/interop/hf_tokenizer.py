"""The tokenizers of the families beyond BERT: any `tokenizers` tokenizer.json (RoBERTa's byte-level
BPE, XLM-R's sentencepiece unigram, ModernBERT's BPE) with the specials and post-processor it
carries (RoBERTa: <s> A </s></s> B </s>), encoding as transformers' fast tokenizers do.

BERT's WordPiece (a vocab.txt, or a tokenizer.json with a WordPiece model) keeps its own class,
mebert.interop.wordpiece.WordPiece; `load_folder_tokenizer` picks.
"""

from __future__ import annotations

import json
import os

from mebert.interop.errors import InteropError
from mebert.interop.wordpiece import FastTokenizer, WordPiece, _json_lowercase, _tokenizer_config

# Per role (pad, unk, cls, sep, mask): BERT's names, then RoBERTa/XLM-R's (ModernBERT uses BERT's).
SPECIAL_CANDIDATES = (("[PAD]", "<pad>"), ("[UNK]", "<unk>"), ("[CLS]", "<s>"), ("[SEP]", "</s>"),
                      ("[MASK]", "<mask>"))
_CONFIG_KEYS = (("pad_token",), ("unk_token",), ("cls_token", "bos_token"),
                ("sep_token", "eos_token"), ("mask_token",))


def _token_name(value) -> str | None:
  """tokenizer_config.json writes a special as a string or as an AddedToken dict."""
  if isinstance(value, dict):
    return value.get("content")
  return value if isinstance(value, str) else None


def find_specials(vocab: dict[str, int], settings: dict) -> tuple[str, ...]:
  """The five specials' names: from tokenizer_config.json where it names them, else the first
  candidate name the vocabulary has (reported by FastTokenizer when none)."""
  names = []
  for keys, candidates in zip(_CONFIG_KEYS, SPECIAL_CANDIDATES):
    named = [_token_name(settings.get(k)) for k in keys]
    named = [n for n in named if n and n in vocab]
    names.append(named[0] if named else next((c for c in candidates if c in vocab), candidates[0]))
  return tuple(names)


class JsonTokenizer(FastTokenizer):
  """A tokenizer.json of any model type; its normalizer, pre-tokenizer and post-processor decide
  everything, as in transformers' PreTrainedTokenizerFast."""

  @classmethod
  def from_file(cls, path: str) -> "JsonTokenizer":
    from tokenizers import Tokenizer

    if not os.path.isfile(path):
      raise InteropError(f"{path}: tokenizer file not found")
    try:
      tok = Tokenizer.from_file(path)
    except Exception as e:  # the Rust error is multi-line: keep its first line
      raise InteropError(f"{path}: not a tokenizers tokenizer.json "
                         f"({str(e).splitlines()[0][:200]})") from None
    tok.no_truncation()
    tok.no_padding()
    settings = _tokenizer_config(os.path.dirname(os.path.abspath(path)))
    specials = find_specials(tok.get_vocab(with_added_tokens=True), settings)
    lowercase = _json_lowercase(json.loads(tok.to_str()).get("normalizer"))
    return cls(tok, path, lowercase, specials=specials, family=type(tok.model).__name__)

  def save(self, folder: str, *, model_max_length: int = 512) -> list[str]:
    """tokenizer.json and a tokenizer_config.json naming the specials, which transformers'
    AutoTokenizer loads as PreTrainedTokenizerFast (every rule is in tokenizer.json)."""
    os.makedirs(folder, exist_ok=True)
    self.tokenizer.save(os.path.join(folder, "tokenizer.json"))
    roles = ("pad_token", "unk_token", "cls_token", "sep_token", "mask_token")
    specials = dict(zip(roles, self.specials))
    specials.update(bos_token=specials["cls_token"], eos_token=specials["sep_token"])
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": model_max_length,
              **specials}
    with open(os.path.join(folder, "tokenizer_config.json"), "w", encoding="utf-8") as f:
      json.dump(config, f, indent=2)
    with open(os.path.join(folder, "special_tokens_map.json"), "w", encoding="utf-8") as f:
      json.dump(specials, f, indent=2)
    return ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]


def is_wordpiece_json(path: str) -> bool:
  try:
    with open(path, encoding="utf-8") as f:
      return (json.load(f).get("model") or {}).get("type") == "WordPiece"
  except (OSError, json.JSONDecodeError) as e:
    raise InteropError(f"{path}: not a tokenizers tokenizer.json ({e})") from None


def load_folder_tokenizer(path: str, *, lowercase: bool | None = None) -> FastTokenizer:
  """A folder (tokenizer.json preferred, else vocab.txt), a tokenizer.json or a vocab.txt:
  WordPiece for BERT's vocabularies, JsonTokenizer for every other tokenizer.json."""
  if os.path.isdir(path):
    json_path = os.path.join(path, "tokenizer.json")
    if os.path.isfile(json_path) and not is_wordpiece_json(json_path):
      return JsonTokenizer.from_file(json_path)
    return WordPiece.from_file(path, lowercase=lowercase)
  if path.endswith(".json") and os.path.isfile(path) and not is_wordpiece_json(path):
    return JsonTokenizer.from_file(path)
  return WordPiece.from_file(path, lowercase=lowercase)
