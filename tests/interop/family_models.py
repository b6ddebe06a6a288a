"""Small random transformers models of the families beyond BERT, with real tokenizers trained on
the standard library's help topics (pydoc_data ships with Python: no download)."""

import json
import pathlib

import numpy as np

VOCAB = 640


def topic_texts(chars: int = 120_000) -> list[str]:
  import pydoc_data.topics  # pylint: disable=import-outside-toplevel

  texts, total = [], 0
  for _, text in sorted(pydoc_data.topics.topics.items()):
    texts.append(text)
    total += len(text)
    if total > chars:
      break
  return texts


def save_tokenizer(kind: str, folder: pathlib.Path) -> None:
  """roberta: byte-level BPE with <s> A </s></s> B </s>; xlmr: sentencepiece unigram, the same
  template; modernbert: byte-level BPE with BERT's specials and [CLS] A [SEP] B [SEP]; electra:
  WordPiece (lowercase), as BERT's."""
  from tokenizers import (ByteLevelBPETokenizer, SentencePieceUnigramTokenizer,  # pylint: disable=import-outside-toplevel
                          BertWordPieceTokenizer, processors)

  texts = topic_texts()
  if kind in ("roberta", "xlmr"):
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    if kind == "roberta":
      tok = ByteLevelBPETokenizer()
      tok.train_from_iterator(texts, vocab_size=VOCAB, min_frequency=2, special_tokens=specials,
                              show_progress=False)
    else:
      tok = SentencePieceUnigramTokenizer()
      tok.train_from_iterator(texts[:12], vocab_size=VOCAB, special_tokens=specials,
                              unk_token="<unk>", show_progress=False)
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
              "cls_token": "<s>", "sep_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>",
              "mask_token": "<mask>"}
  elif kind == "modernbert":
    specials = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]
    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(texts, vocab_size=VOCAB, min_frequency=2, special_tokens=specials,
                            show_progress=False)
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0", pair="[CLS]:0 $A:0 [SEP]:0 $B:0 [SEP]:0",
        special_tokens=[("[CLS]", 1), ("[SEP]", 2)])
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "cls_token": "[CLS]",
              "sep_token": "[SEP]", "pad_token": "[PAD]", "unk_token": "[UNK]",
              "mask_token": "[MASK]"}
  else:
    tok = BertWordPieceTokenizer(lowercase=True)
    tok.train_from_iterator(texts, vocab_size=VOCAB, show_progress=False)
    config = {"tokenizer_class": "BertTokenizer", "do_lower_case": True}
  tok.save(str(folder / "tokenizer.json"))
  (folder / "tokenizer_config.json").write_text(json.dumps(config))


def make_model(folder: pathlib.Path, architecture: str, tokenizer: str, seed: int = 0, **config):
  """Saves a random `architecture` (vocab VOCAB, hidden 32, 4 heads) and its tokenizer; LayerNorm
  and bias values are perturbed, so a swapped or dropped name shows in the parity gate, and the
  query and key weights are scaled up: at the init's std of 0.02 every attention row is nearly
  uniform, and a wrong position encoding or window would hardly change the outputs."""
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel

  torch.manual_seed(seed)
  stem = architecture.split("For")[0].removesuffix("Model")
  config_cls = getattr(transformers, f"{stem}Config")
  cfg = config_cls(**{"vocab_size": VOCAB, "hidden_size": 32, "num_hidden_layers": 2,
                      "num_attention_heads": 4, "intermediate_size": 64, **config})
  model = getattr(transformers, architecture)(cfg)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "norm" in name.lower() or name.endswith("bias"):
        p.add_(0.1 * torch.randn_like(p))
      elif any(k in name for k in ("query.weight", "key.weight", "Wqkv.weight")):
        p.mul_(10.0)
  folder.mkdir(parents=True, exist_ok=True)
  model.save_pretrained(folder)
  save_tokenizer(tokenizer, folder)
  return folder


def assert_trees_equal(a: dict, b: dict) -> None:
  from mebert.interop import hf_names  # pylint: disable=import-outside-toplevel

  fa, fb = hf_names.flatten(a), hf_names.flatten(b)
  assert sorted(fa) == sorted(fb)
  for k in fa:
    np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(fb[k]), err_msg="/".join(k))
