"""A mebert sentencepiece vocab (.model) -> a `tokenizers` tokenizer.json transformers can load.

mebert trains unigram sentencepiece models with [PAD]=0 [UNK]=1 and [CLS] [SEP] [MASK] as control
symbols (mebert.data.tokenizer). The unigram model converts exactly: the same pieces and scores, the
model's precompiled normalisation rules (NFKC, with case folding when trained lowercase), the same
whitespace handling and the "▁" word prefix. Two documented limits: control symbols get a score no
segmentation can pick, as sentencepiece never emits them from text (transformers, which registers
them as special tokens, does turn a literal "[MASK]" in text into its id); and pieces of exactly
equal score (runs of one repeated character) may be segmented differently. BPE models are refused
(the caller exports weights only).
"""

from __future__ import annotations

import json
import os
import shutil

from mebert.interop.errors import InteropError
from mebert.interop.wordpiece import SPECIAL_TOKENS, FastTokenizer

_UNIGRAM = 1  # sentencepiece TrainerSpec.ModelType
_NORMAL, _UNKNOWN, _CONTROL = 1, 2, 3  # sentencepiece ModelProto.SentencePiece.Type
_NEVER = -1e9  # a score no Viterbi path will choose while any alternative exists


def spm_to_tokenizer(path: str, pair_type_id: int = 1) -> FastTokenizer:
  """Builds the tokenizers pipeline of a unigram sentencepiece model, with BERT's template (the
  second sentence of a pair gets type id `pair_type_id`: 0 for models with one token type)."""
  from sentencepiece import sentencepiece_model_pb2
  from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

  proto = sentencepiece_model_pb2.ModelProto()
  try:
    with open(path, "rb") as f:
      proto.ParseFromString(f.read())
  except Exception as e:  # noqa: BLE001 - protobuf's DecodeError and friends
    raise InteropError(f"{path}: not a sentencepiece model ({str(e).splitlines()[0][:200]})") from None
  if proto.trainer_spec.model_type != _UNIGRAM:
    raise InteropError(f"{path}: sentencepiece model_type {proto.trainer_spec.model_type} is not "
                       "unigram; only unigram models convert to tokenizer.json")
  vocab = [(p.piece, _NEVER if p.type == _CONTROL else p.score) for p in proto.pieces]
  unk_id = next((i for i, p in enumerate(proto.pieces) if p.type == _UNKNOWN), None)
  tok = Tokenizer(models.Unigram(vocab, unk_id=unk_id, byte_fallback=proto.trainer_spec.byte_fallback))
  spec = proto.normalizer_spec
  steps = []
  if spec.precompiled_charsmap:
    steps.append(normalizers.Precompiled(spec.precompiled_charsmap))
  if spec.remove_extra_whitespaces:
    steps += [normalizers.Strip(left=True, right=True), normalizers.Replace(Regex(" {2,}"), " ")]
  tok.normalizer = normalizers.Sequence(steps)
  scheme = "always" if spec.add_dummy_prefix else "never"
  tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme=scheme)
  tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme=scheme)
  ids = {p.piece: i for i, p in enumerate(proto.pieces)}
  missing = [t for t in SPECIAL_TOKENS if t not in ids]
  if missing:
    raise InteropError(f"{path}: vocabulary has no {missing[0]} token (BERT needs "
                       f"{' '.join(SPECIAL_TOKENS)})")
  tok.post_processor = processors.TemplateProcessing(
      single="[CLS]:0 $A:0 [SEP]:0",
      pair=f"[CLS]:0 $A:0 [SEP]:0 $B:{pair_type_id} [SEP]:{pair_type_id}",
      special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])])
  return FastTokenizer(tok, path, lowercase=spec.name.endswith("_cf"))


def save_spm_for_transformers(path: str, folder: str, *, model_max_length: int = 512,
                              pair_type_id: int = 1, token_types: bool = True) -> list[str]:
  """Writes tokenizer.json (+ tokenizer_config.json, special_tokens_map.json, and the original
  model as spiece.model) so that AutoTokenizer.from_pretrained(folder) loads a fast tokenizer.
  token_types=False: the tokenizer returns no token_type_ids (ModernBERT's forward takes none)."""
  tokenizer = spm_to_tokenizer(path, pair_type_id)
  os.makedirs(folder, exist_ok=True)
  tokenizer.tokenizer.save(os.path.join(folder, "tokenizer.json"))
  shutil.copy(path, os.path.join(folder, "spiece.model"))
  specials = dict(zip(("pad_token", "unk_token", "cls_token", "sep_token", "mask_token"),
                      SPECIAL_TOKENS))
  # model_input_names: without it the generic fast tokenizer returns no token_type_ids for pairs.
  config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": model_max_length,
            "model_input_names": (["input_ids", "token_type_ids", "attention_mask"] if token_types
                                  else ["input_ids", "attention_mask"]),
            **specials}
  with open(os.path.join(folder, "tokenizer_config.json"), "w", encoding="utf-8") as f:
    json.dump(config, f, indent=2)
  with open(os.path.join(folder, "special_tokens_map.json"), "w", encoding="utf-8") as f:
    json.dump(specials, f, indent=2)
  return ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "spiece.model"]
