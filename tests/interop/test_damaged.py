"""Damaged or unsupported inputs: each is one InteropError whose one-line message names the file and
tensor (or config key). Built from a tiny random model written by export_hf, so no torch needed
except for the pickle cases."""

import json

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from mebert.interop.errors import InteropError
from mebert.interop.hf_export import export_hf
from mebert.interop.hf_import import load_hf_bert
from tiny_models import CFG, VOCAB, random_params  # pylint: disable=import-error

@pytest.fixture
def folder(tmp_path):
  vocab = tmp_path / "vocab.txt"
  vocab.write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
  out = tmp_path / "hf"
  export_hf(random_params(CFG), CFG, str(out), tokenizer_path=str(vocab), parity=False)
  (out / "tokenizer.json").unlink()  # leave vocab.txt as the tokenizer file these tests edit
  return out


def one_line_error(fn, pattern):
  with pytest.raises(InteropError, match=pattern) as e:
    fn()
  assert "\n" not in str(e.value)
  return str(e.value)


def edit_tensors(folder, fn):
  path = folder / "model.safetensors"
  tensors = load_file(path)
  fn(tensors)
  save_file(tensors, path, metadata={"format": "pt"})


def test_intact_folder_loads(folder):
  cfg, params, report = load_hf_bert(str(folder), parity=False)
  assert cfg.hidden_size == 32 and not report.missing and report.tokenizer.endswith("vocab.txt")


def test_missing_config_json(folder):
  (folder / "config.json").unlink()
  one_line_error(lambda: load_hf_bert(str(folder), parity=False), r"config\.json: missing")


def test_missing_tensor(folder):
  key = "bert.encoder.layer.1.attention.self.value.bias"
  edit_tensors(folder, lambda t: t.pop(key))
  one_line_error(lambda: load_hf_bert(str(folder), parity=False),
                 rf"model\.safetensors: tensor {key} missing")


def test_half_a_head_is_damage(folder):
  edit_tensors(folder, lambda t: t.pop("cls.seq_relationship.bias"))
  one_line_error(lambda: load_hf_bert(str(folder), parity=False),
                 r"model\.safetensors: tensor cls\.seq_relationship\.bias missing")


def test_misshapen_tensor(folder):
  key = "bert.encoder.layer.0.intermediate.dense.weight"
  edit_tensors(folder, lambda t: t.update({key: np.zeros((63, 32), np.float32)}))
  one_line_error(lambda: load_hf_bert(str(folder), parity=False),
                 rf"model\.safetensors: tensor {key} has shape \[63, 32\], expected \[64, 32\]")


def test_untied_decoder(folder):
  edit_tensors(folder, lambda t: t.update(
      {"cls.predictions.decoder.weight": np.ones((len(VOCAB), 32), np.float32)}))
  one_line_error(lambda: load_hf_bert(str(folder), parity=False),
                 r"tensor cls\.predictions\.decoder\.weight differs")


def test_truncated_safetensors(folder):
  path = folder / "model.safetensors"
  path.write_bytes(path.read_bytes()[:1000])
  one_line_error(lambda: load_hf_bert(str(folder), parity=False),
                 r"model\.safetensors: unreadable safetensors file")


def test_vocab_without_mask(folder):
  (folder / "vocab.txt").write_text("\n".join(t for t in VOCAB if t != "[MASK]") + "\n")
  one_line_error(lambda: load_hf_bert(str(folder), parity=False),
                 r"vocab\.txt: vocabulary has no \[MASK\] token")


def test_folder_without_weights(folder):
  (folder / "model.safetensors").unlink()
  one_line_error(lambda: load_hf_bert(str(folder), parity=False),
                 r"no model\.safetensors \(or pytorch_model\.bin\)")


def test_unsupported_config(folder):
  config = json.loads((folder / "config.json").read_text())
  config["position_embedding_type"] = "relative_key"
  (folder / "config.json").write_text(json.dumps(config))
  one_line_error(lambda: load_hf_bert(str(folder), parity=False),
                 r"config\.json: position_embedding_type='relative_key'")


def test_pickle_only_is_refused_unless_allowed(folder):
  torch = pytest.importorskip("torch")
  tensors = load_file(folder / "model.safetensors")
  torch.save({k: torch.from_numpy(v) for k, v in tensors.items()}, folder / "pytorch_model.bin")
  (folder / "model.safetensors").unlink()
  msg = one_line_error(lambda: load_hf_bert(str(folder), parity=False),
                       r"pytorch_model\.bin: only pickled PyTorch weights")
  assert "--allow-pickle" in msg
  _, params, report = load_hf_bert(str(folder), parity=False, allow_pickle=True)
  assert report.weight_files == [str(folder / "pytorch_model.bin")]
  np.testing.assert_array_equal(params["bert"]["pooler"]["dense"]["bias"],
                                tensors["bert.pooler.dense.bias"])


def test_cli_allow_pickle_flag(folder, tmp_path, capsys):
  torch = pytest.importorskip("torch")
  pytest.importorskip("orbax.checkpoint")
  from mebert.interop.__main__ import main

  tensors = load_file(folder / "model.safetensors")
  torch.save({k: torch.from_numpy(v) for k, v in tensors.items()}, folder / "pytorch_model.bin")
  (folder / "model.safetensors").unlink()
  args = ["import-hf", f"--from={folder}", f"--to={tmp_path / 'wd'}", "--no-parity"]
  assert main(args) == 2 and "--allow-pickle" in capsys.readouterr().err
  assert main(args + ["--allow-pickle"]) == 0
  assert (tmp_path / "wd" / "checkpoints" / "0").is_dir()


@pytest.mark.parametrize("change,key", [
    (dict(pre_layer_norm=True), "pre_layer_norm"),
    (dict(position_encoding="sinusoidal"), "position_encoding"),
    (dict(hidden_act="geglu"), "hidden_act"),
    (dict(encoding_fusion="concat"), "encoding_fusion")])
def test_export_refuses_non_bert_variants(tmp_path, change, key):
  msg = one_line_error(lambda: export_hf(random_params(CFG), CFG.replace(**change),
                                         str(tmp_path / "x"), parity=False),
                       rf"cannot export to Hugging Face BERT: model\.{key}=")
  assert not (tmp_path / "x").exists(), msg


def test_export_classifier_needs_task_kind(tmp_path):
  one_line_error(lambda: export_hf(random_params(CFG, num_labels=3), CFG, str(tmp_path / "x"),
                                   parity=False), r"classifier but task kind is None")


def test_cli_prints_one_line_and_exits_2(folder, tmp_path, capsys):
  from mebert.interop.__main__ import main

  (folder / "config.json").unlink()
  assert main(["import-hf", f"--from={folder}", f"--to={tmp_path / 'wd'}"]) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("error: ") and "config.json" in err and "\n" not in err
