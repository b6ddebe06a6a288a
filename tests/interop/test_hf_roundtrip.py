"""Hugging Face <-> mebert conversions, each checked by the parity gate (max abs diff <= 1e-4)."""

import json

import numpy as np
import pytest

from mebert.interop import hf_names, parity
from mebert.interop.hf_export import export_hf
from mebert.interop.hf_import import load_hf_bert

pytest.importorskip("torch")
pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def minilm(minilm_dir):
  return load_hf_bert(str(minilm_dir))


def test_minilm_import_parity(minilm):
  cfg, params, report = minilm
  assert (cfg.hidden_size, cfg.num_layers, cfg.num_heads) == (384, 6, 12)
  assert report.groups == ["embeddings", "layer", "pooler"]
  assert set(report.parity) == {"last_hidden_state", "pooler_output"}
  assert max(report.parity.values()) <= 1e-4
  # MiniLM is a bare BertModel: the pretraining heads come from mebert's init, and say so.
  assert "cls/predictions/bias" in report.missing and "cls/seq_relationship/kernel" in report.missing
  assert report.tokenizer.endswith("tokenizer.json") and not report.unused
  np.testing.assert_array_equal(params["cls"]["predictions"]["bias"], 0)


def test_minilm_scan_layers_is_the_stacked_tree(minilm, minilm_dir):
  """The scanned tree is the unrolled one stacked (the gate itself runs the scanned model)."""
  _, flat, _ = minilm
  cfg, stacked, _ = load_hf_bert(str(minilm_dir), parity=False, heads=False, scan_layers=True)
  assert cfg.scan_layers and "cls" not in stacked
  kernel = stacked["bert"]["encoder"]["layer"]["attention"]["self"]["query"]["kernel"]
  assert kernel.shape == (6, 384, 384)
  np.testing.assert_array_equal(
      kernel[3], flat["bert"]["encoder"]["layer_3"]["attention"]["self"]["query"]["kernel"])


def test_pretraining_round_trip_hf_mebert_hf_mebert(make_hf_model, tmp_path, assert_trees_equal):
  folder = make_hf_model("BertForPreTraining")
  cfg, params, report = load_hf_bert(str(folder))
  assert not report.missing and set(report.groups) == {"embeddings", "layer", "pooler", "mlm", "nsp"}
  assert set(report.parity) == {"last_hidden_state", "pooler_output", "mlm_logits", "nsp_logits"}
  assert max(report.parity.values()) <= 1e-4
  exported = export_hf(params, cfg, str(tmp_path / "hf"), tokenizer_path=report.tokenizer)
  assert exported.architecture == "BertForPreTraining" and max(exported.parity.values()) <= 1e-4
  _, again, _ = load_hf_bert(str(tmp_path / "hf"), parity=False)
  assert_trees_equal(params, again)


@pytest.mark.parametrize("kind,architecture", [
    ("classification", "BertForSequenceClassification"),
    ("token_classification", "BertForTokenClassification")])
def test_classifier_round_trip_keeps_labels(make_hf_model, tmp_path, kind, architecture):
  import transformers

  labels = ["O", "B-PER", "I-PER"] if kind == "token_classification" else ["negative", "positive"]
  folder = make_hf_model(architecture, id2label=dict(enumerate(labels)))
  cfg, params, report = load_hf_bert(str(folder))
  assert report.labels == labels and report.task_kind == kind
  assert "classifier_logits" in report.parity and max(report.parity.values()) <= 1e-4
  assert params["classifier"]["kernel"].shape == (64, len(labels))
  out = tmp_path / "hf"
  exported = export_hf(params, cfg, str(out), labels=labels, task_kind=kind,
                       tokenizer_path=report.tokenizer)
  assert exported.architecture == architecture and "classifier_logits" in exported.parity
  reloaded = transformers.AutoConfig.from_pretrained(out)
  assert reloaded.architectures == [architecture]
  assert reloaded.id2label == dict(enumerate(labels))
  assert reloaded.label2id == {name: i for i, name in enumerate(labels)}


def test_bare_keys_and_old_layernorm_names(make_hf_model, tmp_path):
  """BertModel files have no `bert.` prefix; old checkpoints say LayerNorm.gamma/beta."""
  from safetensors.numpy import load_file, save_file

  folder = make_hf_model("BertModel")
  tensors = load_file(folder / "model.safetensors")
  assert "embeddings.word_embeddings.weight" in tensors
  old = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
         for k, v in tensors.items()}
  (tmp_path / "old").mkdir()
  save_file(old, tmp_path / "old" / "model.safetensors", metadata={"format": "pt"})
  (tmp_path / "old" / "config.json").write_text((folder / "config.json").read_text())
  _, new_params, _ = load_hf_bert(str(folder), parity=False, heads=False)
  _, old_params, report = load_hf_bert(str(tmp_path / "old"), parity=False, heads=False)
  assert any(".gamma" in k for k in report.loaded) and not report.unused
  np.testing.assert_array_equal(old_params["bert"]["embeddings"]["LayerNorm"]["scale"],
                                new_params["bert"]["embeddings"]["LayerNorm"]["scale"])


def test_gate_catches_a_mapping_bug(make_hf_model, tmp_path, monkeypatch):
  """A name-map bug (query and key swapped in one layer) writes a loadable but wrong model."""
  import dataclasses
  from mebert.interop.errors import InteropError

  folder = make_hf_model("BertForPreTraining")
  cfg, params, report = load_hf_bert(str(folder), parity=False)
  entries = hf_names.entries

  def swapped(*args, **kwargs):
    out = []
    for e in entries(*args, **kwargs):
      if ".layer.1.attention.self.query.weight" in e.hf:
        e = dataclasses.replace(e, hf=e.hf.replace("query", "key"))
      elif ".layer.1.attention.self.key.weight" in e.hf:
        e = dataclasses.replace(e, hf=e.hf.replace("key", "query"))
      out.append(e)
    return out

  monkeypatch.setattr(hf_names, "entries", swapped)
  with pytest.raises(InteropError, match="parity gate .*last_hidden_state"):
    export_hf(params, cfg, str(tmp_path / "hf"), tokenizer_path=report.tokenizer)


def test_gate_skips_without_torch(make_hf_model, tmp_path, monkeypatch):
  monkeypatch.setattr(parity, "torch_available", lambda: False)
  folder = make_hf_model("BertForPreTraining")
  cfg, params, report = load_hf_bert(str(folder))
  assert report.parity is None and any("skipped" in n for n in report.notes)
  exported = export_hf(params, cfg, str(tmp_path / "hf"))
  assert exported.parity is None
  config = json.loads((tmp_path / "hf" / "config.json").read_text())
  assert config["architectures"] == ["BertForPreTraining"] and config["tie_word_embeddings"]


def test_workdir_cli_round_trip_with_scan_layers(make_hf_model, tmp_path, assert_trees_equal):
  """import-hf -> a mebert checkpoint (scanned layers) -> export-hf -> identical weights."""
  pytest.importorskip("orbax.checkpoint")
  from mebert.interop.__main__ import main
  from mebert.train.checkpoints import restore_params

  folder = make_hf_model("BertForPreTraining")
  wd, out = tmp_path / "wd", tmp_path / "hf"
  assert main(["import-hf", f"--from={folder}", f"--to={wd}", "--scan_layers"]) == 0
  params, config = restore_params(str(wd))
  assert config["model"]["scan_layers"] and config["data"]["vocab"] == str(wd / "vocab" / "tokenizer.json")
  assert params["bert"]["encoder"]["layer"]["output"]["dense"]["kernel"].shape == (2, 128, 64)
  assert main(["export-hf", f"--from={wd}", f"--to={out}"]) == 0
  _, original, _ = load_hf_bert(str(folder), parity=False)
  _, exported, _ = load_hf_bert(str(out), parity=False)
  assert_trees_equal(original, exported)
  assert hf_names.is_stacked(params)


def test_trainer_init_hf_merges_into_a_scanned_model(make_hf_model):
  """What config.init.hf does: the imported tree lands on the model's own (scanned) init tree."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  from mebert.interop.errors import InteropError
  from mebert.interop.hf_config import check_same_architecture
  from mebert.model.pretraining import BertForPreTraining
  from mebert.train.init_from import merge_params

  folder = make_hf_model("BertModel")
  hf_cfg, source, _ = load_hf_bert(str(folder), parity=False, heads=False, scan_layers=True)
  run_cfg = hf_cfg.replace(dtype="bfloat16", remat_policy="full", dropout_rate=0.0)
  check_same_architecture(run_cfg, hf_cfg, "init.hf")  # runtime keys may differ
  with pytest.raises(InteropError, match=r"model\.hidden_size=128 but init\.hf has 64"):
    check_same_architecture(run_cfg.replace(hidden_size=128, num_heads=4), hf_cfg, "init.hf")
  ids = jnp.zeros((1, 8), jnp.int32)
  shapes = jax.eval_shape(lambda r: nn.unbox(BertForPreTraining(run_cfg).init(r, ids)["params"]),
                          jax.random.PRNGKey(0))  # the model's own tree, without compiling it
  target = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  merged, missing = merge_params(target, source, origin="init.hf")
  assert missing and all(m.startswith("['cls']") for m in missing)
  np.testing.assert_array_equal(
      merged["bert"]["encoder"]["layer"]["intermediate"]["dense"]["kernel"],
      source["bert"]["encoder"]["layer"]["intermediate"]["dense"]["kernel"])


def test_masked_lm_checkpoint_initialises_pooler_and_nsp(make_hf_model):
  """BertForMaskedLM has the MLM head but no pooler or NSP head: those are initialised, reported,
  and the gate compares what the file does determine (hidden states, MLM logits)."""
  folder = make_hf_model("BertForMaskedLM")
  _, params, report = load_hf_bert(str(folder))
  assert "mlm" in report.groups and "pooler" not in report.groups and "nsp" not in report.groups
  assert "bert/pooler/dense/kernel" in report.missing
  assert "cls/seq_relationship/kernel" in report.missing
  assert set(report.parity) == {"last_hidden_state", "mlm_logits"}
  assert max(report.parity.values()) <= 1e-4


def test_sharded_and_bfloat16_safetensors(make_hf_model, tmp_path):
  import torch
  import transformers

  folder = make_hf_model("BertModel")
  _, reference, _ = load_hf_bert(str(folder), parity=False, heads=False)
  model = transformers.BertModel.from_pretrained(folder)
  model.save_pretrained(tmp_path / "sharded", max_shard_size="300KB")
  assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
  _, sharded, report = load_hf_bert(str(tmp_path / "sharded"), parity=False, heads=False)
  assert len(report.weight_files) > 1
  np.testing.assert_array_equal(hf_names.flatten(sharded)[("bert", "pooler", "dense", "kernel")],
                                hf_names.flatten(reference)[("bert", "pooler", "dense", "kernel")])
  model.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
  _, bf16, _ = load_hf_bert(str(tmp_path / "bf16"), parity=False, heads=False)
  got = bf16["bert"]["encoder"]["layer_1"]["output"]["dense"]["kernel"]
  want = reference["bert"]["encoder"]["layer_1"]["output"]["dense"]["kernel"]
  assert got.dtype == np.float32
  np.testing.assert_allclose(got, want, rtol=1e-2, atol=1e-3)
