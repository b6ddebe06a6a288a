"""The encodings ablation: its config's variants, and the report (table and PNG) from run folders."""

import io
import json

import pytest

from mebert.experiments import encodings_report


def test_every_variant_shares_the_budget_and_differs_only_in_its_model_keys():
  module = encodings_report.load_config_module()
  assert {"learned", "sinusoidal", "relative", "rotary", "alibi", "none"} <= set(module.VARIANTS)
  base = module.get_config()
  assert base.model.position_encoding == "learned"
  # The learned table has exactly the training length's rows: no untrained rows to extrapolate with.
  assert base.model.max_position_embeddings == base.data.seq_len
  for name, keys in module.VARIANTS.items():
    c = module.get_config(name)
    for section in ("data", "train", "eval", "checkpoint"):
      assert c[section].to_dict() == base[section].to_dict(), (name, section)
    assert {k: v for k, v in c.model.items() if base.model[k] != v} == keys, name
  with pytest.raises(ValueError, match="unknown variant 'rope'.*rotary"):
    module.get_config("rope")


def test_masked_share_follows_an_eval_length_override():
  c = encodings_report.load_config_module().get_config("rotary")
  c.lock()
  assert (c.data.seq_len, c.data.max_predictions_per_seq) == (64, 10)
  c.data.seq_len = 256  # what --config.data.seq_len=256 does
  assert c.data.max_predictions_per_seq == 39  # ceil(15% of 256)
  assert c.to_dict()["data"]["max_predictions_per_seq"] == 39


MODEL = dict(vocab_size=100, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
             max_position_embeddings=16, hidden_act="gelu", position_encoding="learned",
             encoding_fusion="sum", use_segment_embeddings=True, pre_layer_norm=False, use_bias=True)


def _run(root, name, accuracies, errors=(), **model):
  """A run folder as the trainer and --mode=eval leave it (trained at 16 tokens for 20 steps)."""
  d = root / name
  d.mkdir()
  (d / "config.json").write_text(json.dumps({
      "model": dict(MODEL, **model), "data": {"seq_len": 16, "vocab": ""},
      "train": {"num_steps": 20, "batch_size": 8}}))
  (d / "metrics.jsonl").write_text("".join(
      json.dumps({"step": s, "split": "train", "steps_per_s": r}) + "\n"
      for s, r in ((10, 0.5), (20, 4.0), (20, 5.0))))  # compile window; a resumed step rewritten
  for length, acc in accuracies.items():
    suffix = "" if length == 16 else f"_len{length}"
    (d / f"eval_step_20{suffix}.json").write_text(json.dumps(
        {"mlm_accuracy": acc, "most_frequent_token_accuracy": 0.05, "step": 20}))
  (d / "eval_step_10_len32.json").write_text(json.dumps({"mlm_accuracy": 0.9}))  # another step
  for length in errors:
    (d / f"eval_len{length}_error.json").write_text(json.dumps({"seq_len": length, "error": "no"}))


def _png_size(data: bytes):
  """(width, height) of a PNG that decodes (matplotlib's: RGBA), and that it shows lines."""
  from PIL import Image

  assert data[:8] == b"\x89PNG\r\n\x1a\n"
  image = Image.open(io.BytesIO(data))
  image.load()
  colours = len(set(image.convert("RGB").getdata()))
  assert colours > 8, colours  # series, baseline, text: more than a blank canvas
  return image.size


def test_report_table_plot_and_doc(tmp_path):
  runs, out = tmp_path / "runs", tmp_path / "docs"
  runs.mkdir()
  out.mkdir()
  _run(runs, "learned", {16: 0.25}, errors=(32,))
  _run(runs, "rotary", {16: 0.3, 32: 0.28, 64: 0.2}, position_encoding="rotary")
  _run(runs, "preln_geglu", {16: 0.2}, pre_layer_norm=True, hidden_act="geglu",
       position_encoding="sinusoidal")
  # The side-by-side measurement, when there is one, wins over the training run's log windows.
  (runs / "preln_geglu" / "step_time.json").write_text(json.dumps({"median_ms": 123.4}))
  (out / "encodings.md").write_text(f"# title\n{encodings_report.BEGIN}\nold\n"
                                    f"{encodings_report.END}\ntail\n")
  table = encodings_report.write_report(runs, out)
  lines = table.splitlines()
  assert lines[0] == ("| variant | encodings and block | parameters | step (ms) | MLM acc @16 (1x) "
                      "| MLM acc @32 (2x) | MLM acc @64 (4x) |")
  rows = {line.split(" | ")[0][2:]: line.split(" | ") for line in lines[2:]}
  assert list(rows)[:3] == ["`learned`", "`rotary`", "`preln_geglu`"]  # the config's order
  # learned: an error file at 32, and 64 is past its table even without one.
  assert rows["`learned`"][4:] == ["0.2500", "n/a (table)", "n/a (table) |"]
  # Step time: the first log window (compilation) is left out; a resumed run's record of a step
  # replaces the earlier one: 1000 / 5 steps/s.
  assert rows["`rotary`"][1:] == ["rotary positions", rows["`rotary`"][2], "200", "0.3000",
                                  "0.2800", "0.2000 |"]
  assert rows["`preln_geglu`"][1:4] == ["sinusoidal positions, pre-LN, GeGLU",
                                        rows["`preln_geglu`"][2], "123"]
  assert rows["`preln_geglu`"][6] == "missing |"  # no file, and it could have run
  learned_params = int(rows["`learned`"][2].replace(",", ""))
  rotary_params = int(rows["`rotary`"][2].replace(",", ""))
  assert learned_params - rotary_params == 16 * 32  # the table is the only difference
  assert lines[-1].startswith("| always the most frequent token |")
  assert (out / "encodings_table.md").read_text() == table
  assert _png_size((out / "encodings.png").read_bytes()) == (900, 560)
  assert (out / "encodings.md").read_text() == (
      f"# title\n{encodings_report.BEGIN}\n{table}{encodings_report.END}\ntail\n")
