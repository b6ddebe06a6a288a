"""A model trained with a sentencepiece vocab exports with a tokenizer.json transformers loads, and
that tokenizer gives the ids mebert's pipeline gives ([CLS] pieces [SEP])."""

import csv

import numpy as np
import pytest

from mebert.interop.hf_export import export_hf
from mebert.interop.spm_convert import spm_to_tokenizer

transformers = pytest.importorskip("transformers")
pytest.importorskip("sentencepiece")


@pytest.fixture(scope="module")
def spm_model(shared_data, tmp_path_factory):
  from mebert.data.tokenizer import train_sentencepiece

  src = shared_data / "botchan" / "botchan.txt"
  if not src.is_file():
    pytest.skip(f"{src} not found")
  prefix = tmp_path_factory.mktemp("spm") / "spm"
  return train_sentencepiece([src.read_text(encoding="utf-8-sig")], vocab_size=1000,
                             output_prefix=str(prefix), lowercase=True)


def sst2(shared_data, n=200):
  path = shared_data / "sst2" / "train.tsv"
  if not path.is_file():
    pytest.skip(f"{path} not found")
  with open(path, encoding="utf-8") as f:
    return [r[0] for r in list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1:n + 1]]


def test_converted_tokenizer_matches_the_pipeline(spm_model, shared_data):
  from mebert.data.tokenizer import load_tokenizer
  from mebert.embed import _pipeline_tokenize  # pylint: disable=protected-access

  texts = sst2(shared_data) + ["Café NAÏVE  double  space ", "ＦＵＬＬ width", "我们住的房间", ""]
  ours = load_tokenizer(spm_model)
  want, _ = _pipeline_tokenize(ours)(texts, 10_000)
  got = spm_to_tokenizer(spm_model).encode(texts, padding=None)["input_ids"]
  assert got == want
  assert all(r[0] == ours.cls_id and r[-1] == ours.sep_id for r in want)


def test_export_with_spm_vocab_loads_in_transformers(spm_model, shared_data, tmp_path):
  from tiny_models import random_params  # pylint: disable=import-error
  from mebert.model.config import ModelConfig

  tok = spm_to_tokenizer(spm_model)
  cfg = ModelConfig(vocab_size=tok.vocab_size, hidden_size=32, num_layers=2, num_heads=4,
                    intermediate_size=64, max_position_embeddings=128)
  report = export_hf(random_params(cfg), cfg, str(tmp_path / "hf"), tokenizer_path=spm_model)
  assert "tokenizer.json" in report.tokenizer_files and max(report.parity.values()) <= 1e-4
  hf = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
  texts = sst2(shared_data, 100)
  theirs = hf(texts[:-1], texts[1:], truncation=True, max_length=32, padding="longest",
              return_tensors="np")
  mine = tok.encode(texts[:-1], texts[1:], max_length=32)
  for key in ("input_ids", "token_type_ids", "attention_mask"):
    np.testing.assert_array_equal(mine[key], theirs[key])
