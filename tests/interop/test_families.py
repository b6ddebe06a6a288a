"""RoBERTa / XLM-R, ELECTRA and ModernBERT <-> mebert, each conversion checked by the parity gate
(hidden states and head logits within 1e-4, float32, on real sentences), then exported and read
back. Random transformers models from tiny configs: no weights are downloaded."""

import json

import numpy as np
import pytest

from family_models import assert_trees_equal, make_model  # pylint: disable=import-error
from mebert.interop import hf_names
from mebert.interop.errors import InteropError
from mebert.interop.hf_export import export_hf
from mebert.interop.hf_import import load_hf_bert

pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

ROBERTA = dict(max_position_embeddings=66, type_vocab_size=1, pad_token_id=1, bos_token_id=0,
               eos_token_id=2)
# Four layers: global 0 and 3, local 1 and 2 with a window (16) shorter than the sentences.
MODERNBERT = dict(num_hidden_layers=4, intermediate_size=48, pad_token_id=3, bos_token_id=1,
                  eos_token_id=2, cls_token_id=1, sep_token_id=2, local_attention=16,
                  global_attn_every_n_layers=3, global_rope_theta=160000.0,
                  local_rope_theta=10000.0)


def _round_trip(folder, tmp_path, **export_kwargs):
  cfg, params, report = load_hf_bert(str(folder))
  assert report.parity and max(report.parity.values()) <= 1e-4, report.parity
  assert not report.unused, report.unused
  exported = export_hf(params, cfg, str(tmp_path / "out"), tokenizer_path=report.tokenizer,
                       labels=report.labels, task_kind=report.task_kind, **export_kwargs)
  assert exported.architecture == report.architecture.replace("XLMRoberta", "Roberta")
  assert exported.parity and max(exported.parity.values()) <= 1e-4, exported.parity
  _, again, _ = load_hf_bert(str(tmp_path / "out"), parity=False)
  assert_trees_equal(params, again)
  return cfg, params, report


def test_roberta_masked_lm(tmp_path):
  folder = make_model(tmp_path / "hf", "RobertaForMaskedLM", "roberta", **ROBERTA)
  cfg, params, report = _round_trip(folder, tmp_path)
  assert (cfg.family, cfg.position_offset, cfg.type_vocab_size) == ("roberta", 2, 1)
  assert set(report.parity) == {"last_hidden_state", "mlm_logits"}
  assert "lm_head.decoder.weight" not in report.unused and "pooler" not in params["bert"]


def test_roberta_sequence_classifier_is_dense_tanh_out_proj(tmp_path):
  labels = ["negative", "positive", "neutral"]
  folder = make_model(tmp_path / "hf", "RobertaForSequenceClassification", "roberta",
                      id2label=dict(enumerate(labels)), **ROBERTA)
  _, params, report = _round_trip(folder, tmp_path)
  assert report.labels == labels and report.task_kind == "classification"
  assert set(params["classifier"]) == {"dense", "out_proj"}
  assert "classifier_logits" in report.parity
  assert json.loads((tmp_path / "out" / "config.json").read_text())["id2label"]["2"] == "neutral"


def test_roberta_token_classifier_and_bare_model_with_pooler(tmp_path):
  folder = make_model(tmp_path / "tok", "RobertaForTokenClassification", "roberta",
                      id2label={0: "O", 1: "B-X"}, **ROBERTA)
  _, params, report = load_hf_bert(str(folder))
  assert report.task_kind == "token_classification" and set(params["classifier"]) == {"kernel",
                                                                                      "bias"}
  assert max(report.parity.values()) <= 1e-4 and "classifier_logits" in report.parity
  bare = make_model(tmp_path / "bare", "RobertaModel", "roberta", seed=1, **ROBERTA)
  _, _, report = _round_trip(bare, tmp_path)
  assert set(report.parity) == {"last_hidden_state", "pooler_output"}


def test_xlm_roberta_with_a_unigram_tokenizer(tmp_path):
  folder = make_model(tmp_path / "hf", "XLMRobertaForMaskedLM", "xlmr", **ROBERTA)
  config = json.loads((folder / "config.json").read_text())
  assert config["model_type"] == "xlm-roberta"
  cfg, _, report = load_hf_bert(str(folder))
  assert cfg.family == "roberta" and max(report.parity.values()) <= 1e-4
  assert report.architecture == "XLMRobertaForMaskedLM"


def test_xlm_roberta_through_a_workdir_keeps_its_unigram_tokenizer(tmp_path):
  """import-hf into a workdir, then export-hf from it (the CLI's path): the Unigram tokenizer.json
  travels with the weights and tokenizes as the original folder's does."""
  from mebert.interop.workdir import export_workdir, import_to_workdir

  folder = make_model(tmp_path / "hf", "XLMRobertaForMaskedLM", "xlmr", **ROBERTA)
  import_to_workdir(str(folder), str(tmp_path / "w"))
  saved = json.loads((tmp_path / "w" / "vocab" / "tokenizer.json").read_text())
  assert saved["model"]["type"] == "Unigram"
  exported = export_workdir(str(tmp_path / "w"), str(tmp_path / "out"))
  assert max(exported.parity.values()) <= 1e-4
  text = "The quick brown fox jumps over the lazy dog near the river bank."
  original = transformers.AutoTokenizer.from_pretrained(str(folder))
  again = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "out"))
  assert again(text)["input_ids"] == original(text)["input_ids"]


def test_roberta_pairs_tokenize_as_transformers_does(tmp_path):
  from mebert.interop.hf_tokenizer import load_folder_tokenizer

  folder = tmp_path / "tok"
  folder.mkdir()
  from family_models import save_tokenizer  # pylint: disable=import-error

  save_tokenizer("roberta", folder)
  ours = load_folder_tokenizer(str(folder))
  theirs = transformers.AutoTokenizer.from_pretrained(folder)
  a = ["Call me Ishmael.", "The café's naïve décor, 我们住的房间."]
  b = ["Some years ago - never mind how long precisely.", "and a second"]
  want = theirs(a, b, truncation=True, max_length=24, padding="longest", return_tensors="np")
  got = ours.encode(a, b, max_length=24)
  np.testing.assert_array_equal(got["input_ids"], want["input_ids"])
  row = list(got["input_ids"][1])
  assert row[0] == ours.cls_id and row.count(ours.sep_id) == 3  # <s> A </s></s> B </s>


@pytest.mark.parametrize("kind", ["roberta", "xlmr", "modernbert"])
def test_pretraining_pipeline_reads_the_families_tokenizers(kind, tmp_path):
  """mebert.data's tokenizer for pretraining or continued pretraining on a family's vocabulary:
  its specials under either naming, and word starts for whole-word masking."""
  from family_models import save_tokenizer  # pylint: disable=import-error
  from mebert.data.tokenizer import load_tokenizer

  save_tokenizer(kind, tmp_path)
  tok = load_tokenizer(str(tmp_path / "tokenizer.json"))
  names = [tok.id_to_token(i) for i in tok.special_ids]
  want = (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] if kind == "modernbert"
          else ["<pad>", "<unk>", "<s>", "</s>", "<mask>"])
  assert names == want
  ids = tok.encode("Some years ago, never mind how long")
  starts = [tok.id_to_token(i) for i in ids if tok.word_start[i]]
  assert len(starts) >= 5 and all(t[0] in "\u0120\u2581" for t in starts[1:])


def test_electra_discriminator_with_projected_embeddings(tmp_path):
  folder = make_model(tmp_path / "hf", "ElectraForPreTraining", "electra", embedding_size=16)
  cfg, params, report = _round_trip(folder, tmp_path)
  assert (cfg.family, cfg.embedding_size) == ("electra", 16)
  assert params["bert"]["embeddings_project"]["kernel"].shape == (16, 32)
  assert set(report.parity) == {"last_hidden_state", "rtd_logits"}
  bare = make_model(tmp_path / "bare", "ElectraModel", "electra", seed=1, embedding_size=16)
  _, _, report = load_hf_bert(str(bare))
  assert report.groups == ["embeddings", "layer"] and max(report.parity.values()) <= 1e-4


def test_modernbert_masked_lm(tmp_path):
  folder = make_model(tmp_path / "hf", "ModernBertForMaskedLM", "modernbert", **MODERNBERT)
  cfg, params, report = _round_trip(folder, tmp_path)
  assert (cfg.local_attention_window, cfg.global_attention_every) == (16, 3)
  assert (cfg.rotary_base, cfg.local_rotary_base) == (160000.0, 10000.0)
  assert [cfg.layer_is_local(i) for i in range(4)] == [False, True, True, False]
  assert set(report.parity) == {"last_hidden_state", "mlm_logits"}
  assert "bias" not in params["bert"]["encoder"]["layer_1"]["intermediate"]["dense"]
  # The sentences are longer than the window: global attention everywhere differs by far more
  # than the gate's tolerance, so the gate checks the window.
  from mebert.interop import parity

  batch = parity.parity_batch(None, cfg.vocab_size, cfg.pad_token_id)
  batch["token_type_ids"][:] = 0
  ours = parity.mebert_outputs(cfg.replace(local_attention_window=0), params, batch,
                               task_kind=None)["last_hidden_state"]
  local = parity.mebert_outputs(cfg, params, batch, task_kind=None)["last_hidden_state"]
  real = batch["attention_mask"].astype(bool)
  assert np.abs(ours - local)[real].max() > 10 * parity.TOLERANCE


def test_modernbert_sequence_classifier_with_mean_pooling(tmp_path):
  folder = make_model(tmp_path / "hf", "ModernBertForSequenceClassification", "modernbert",
                      classifier_pooling="mean", id2label={0: "a", 1: "b"}, **MODERNBERT)
  cfg, params, report = _round_trip(folder, tmp_path)
  assert cfg.classifier_pooling == "mean" and "classifier_logits" in report.parity
  assert set(params["classifier"]) == {"dense", "LayerNorm", "out_proj"}


def test_modernbert_gate_catches_an_unpermuted_rotary_layout(tmp_path, monkeypatch):
  """Without the half/interleaved permutation of the query and key rows the model loads, runs,
  and is wrong: the gate must say so."""
  folder = make_model(tmp_path / "hf", "ModernBertModel", "modernbert", **MODERNBERT)
  monkeypatch.setattr(hf_names, "_rotary_rows", lambda heads, rows: np.arange(rows))
  with pytest.raises(InteropError, match="parity gate .*last_hidden_state"):
    load_hf_bert(str(folder))


def test_refusals_name_the_key(tmp_path):
  from mebert.model.config import ModelConfig
  from tiny_models import random_params  # pylint: disable=import-error

  cfg = ModelConfig(vocab_size=64, hidden_size=32, num_layers=1, num_heads=4,
                    intermediate_size=64, max_position_embeddings=66, family="roberta",
                    pad_token_id=1, position_offset=0)
  with pytest.raises(InteropError, match=r"RoBERTa: model\.position_offset=0, RoBERTa needs "
                                         r"pad_token_id \+ 1 = 2"):
    export_hf(random_params(cfg), cfg, str(tmp_path / "x"), parity=False)
  modern = cfg.replace(family="modernbert", position_offset=0, pre_layer_norm=True,
                       hidden_act="geglu", position_encoding="rotary")
  with pytest.raises(InteropError, match=r"ModernBERT: model\.use_segment_embeddings=True"):
    export_hf({}, modern, str(tmp_path / "y"), parity=False)
  config = json.loads(json.dumps({"model_type": "modernbert", "vocab_size": 10, "hidden_size": 8,
                                  "num_hidden_layers": 3, "num_attention_heads": 2,
                                  "intermediate_size": 8, "layer_types": [
                                      "sliding_attention", "full_attention", "full_attention"]}))
  (tmp_path / "z").mkdir()
  (tmp_path / "z" / "config.json").write_text(json.dumps(config))
  with pytest.raises(InteropError, match="is not global every n-th layer from layer 0"):
    load_hf_bert(str(tmp_path / "z"), parity=False)
