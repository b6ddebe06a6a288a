"""Like for like in fine-tuning comparisons (issue 20, item 8): the PyTorch peer evaluates at
mebert's cadence, selects as mebert does, reports its last step and its selection apart, and
scores both on an evaluation split the selection never saw; finetune_compare reports the same
rule for both sides."""

import json
import os
import re
import shutil

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from mebert.bench import finetune_compare, finetune_peer  # noqa: E402
from mebert.tasks import data as data_lib, finetune, holdout, inference  # noqa: E402


@pytest.fixture(scope="module")
def selection_config(tiny_config, vocab_file, sentences, tmp_path_factory):
  """A tiny HF folder and a classification config with a selection split at offset 0.2."""
  folder = tmp_path_factory.mktemp("hf")
  with open(vocab_file, encoding="utf-8") as f:
    vocab_size = sum(1 for _ in f)
  config = transformers.BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=1,
                                   num_attention_heads=2, intermediate_size=64,
                                   max_position_embeddings=32)
  torch.manual_seed(0)
  transformers.BertModel(config).save_pretrained(folder)
  shutil.copy(vocab_file, folder / "vocab.txt")
  rows = ["sentence\tlabel"] + [f"{s}\t{int('good' in s or 'great' in s)}"
                                for s in sentences(320, seed=5)]
  data = tmp_path_factory.mktemp("data") / "train.tsv"
  data.write_text("\n".join(rows) + "\n")
  c = tiny_config("classification", "", **{
      "data.train_files": str(data), "data.holdout_fraction": 0.2, "data.holdout_offset": 0.2,
      "init.hf": str(folder), "train.num_steps": 9, "eval.every_steps": 3,
      "early_stopping.patience": 0, "train.learning_rate": 3e-3})
  c.data.vocab = ""
  c.init.random = False  # it starts from the HF folder above (init.* are exclusive)
  return c


def test_the_peer_selects_as_mebert_does_and_reports_both(selection_config, capsys):
  c = selection_config
  record = finetune_peer.run(c, report_offset=0.0)
  printed = capsys.readouterr().out
  evals = [(int(s), float(v)) for s, v in re.findall(r"eval step (\d+): accuracy=([\d.]+)",
                                                      printed)]
  assert [s for s, _ in evals] == [3, 6, 9]  # every eval.every_steps and the last step
  best_step, best = max(evals, key=lambda e: (e[1], -e[0]))  # the first of the highest
  assert record["best"]["step"] == best_step
  assert record["best"]["accuracy"] == pytest.approx(best, abs=1e-4)
  assert record["last_step"] == 9 and record["accuracy"] == pytest.approx(evals[-1][1], abs=1e-4)
  # The selection split is buckets [0.2, 0.4); the report split [0, 0.2), which it never saw.
  examples = data_lib.read_examples(c.data.train_files, c.task, c.data)
  _, report = holdout.holdout_split(examples, 0.2, 0.0)
  _, selection = holdout.holdout_split(examples, 0.2, 0.2)
  assert record["num_eval_examples"] == len(selection)
  split = record["report_split"]
  assert split["num_examples"] == len(report) and split["holdout_offset"] == 0.0
  assert {t.text for t in report}.isdisjoint({t.text for t in selection})
  if best_step == 9:
    assert split["best"] == split["last"]  # the same weights
  for key in ("best", "last"):
    assert 0.0 <= split[key]["accuracy"] <= 1.0


def test_the_report_split_must_not_overlap_the_selection(selection_config):
  with pytest.raises(ValueError, match="overlaps the selection split"):
    finetune_peer.report_split(selection_config, 0.1)
  plain = selection_config.copy_and_resolve_references()
  plain.data.holdout_offset = 0.0
  with pytest.raises(ValueError, match="needs a selection split"):
    finetune_peer.report_split(plain, 0.0)


@pytest.mark.slow
def test_mebert_evaluates_at_the_peers_steps(selection_config, tmp_path):
  finetune.FineTuning(selection_config, str(tmp_path / "run")).train()
  evals = finetune_compare.evals(os.path.join(tmp_path, "run", "metrics.jsonl"))
  assert [int(e["step"]) for e in evals] == [3, 6, 9]
  dev = inference.dataset_splits(selection_config)[1]
  assert len(dev) == len(holdout.holdout_split(
      data_lib.read_examples(selection_config.data.train_files, selection_config.task,
                             selection_config.data), 0.2, 0.2)[1])


def test_compare_reports_one_rule_for_both_sides(selection_config):
  c = selection_config
  assert finetune_compare.selection_overrides(c, "last") == (
      ["--config.early_stopping.patience=0"], None)
  assert finetune_compare.selection_overrides(c, "split") == (
      ["--config.data.holdout_offset=0.2"], 0.0)
  mebert = {"last": {"accuracy": 0.7}, "last_step": 9, "train_time_s": 1.0,
            "train_real_tokens_per_s": 10.0,
            "report_split": {"best": {"accuracy": 0.8}, "last": {"accuracy": 0.75}}}
  peer = {"accuracy": 0.71, "last_step": 9, "train_time_s": 2.0, "train_real_tokens_per_s": 5.0,
          "report_split": {"best": {"accuracy": 0.79}, "last": {"accuracy": 0.74}}}
  for selection, want in (("last", ({"last": 0.7}, {"last": 0.71})),
                          ("split", ({"last": 0.75, "selected": 0.8},
                                     {"last": 0.74, "selected": 0.79}))):
    heads = {side: finetune_compare.headline(r, side, "accuracy", selection)
             for side, r in (("mebert", mebert), ("peer", peer))}
    assert (heads["mebert"], heads["peer"]) == want
    text = finetune_compare.table({"selection": selection, "metric": "accuracy",
                                   "mebert": mebert, "peer": peer, "headline": heads})
    assert text.count("\n") == 3 and ("selected on the selection split" in text) == (
        selection == "split")
  no_split = c.copy_and_resolve_references()
  no_split.data.eval_files = c.data.train_files
  with pytest.raises(SystemExit, match="needs a config that holds out"):
    finetune_compare.selection_overrides(no_split, "split")
  assert finetune_compare.config_args(["--workdir=w", "--config=x.py:a", "--config.seed=1"]) == [
      "--config=x.py:a", "--config.seed=1"]  # passed to both sides as given
  with pytest.raises(SystemExit):
    finetune_compare.config_args(["--config", "x.py"])


@pytest.mark.slow
def test_finetune_compare_end_to_end(selection_config, tmp_path):
  import subprocess
  import sys

  c = selection_config
  path = tmp_path / "tiny_cfg.py"
  path.write_text(
      "from mebert.tasks.defaults import finetune_defaults\n\n\n"
      "def get_config(arg=None):\n"
      "  c = finetune_defaults()\n"
      f"  c.update_from_flattened_dict({_flat(c)!r})\n"
      "  return c\n")
  repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  cmd = [sys.executable, "-m", "mebert.bench.finetune_compare", f"--config={path}",
         f"--workdir={tmp_path / 'cmp'}", "--selection=split", "--config.seed=1"]
  env = dict(os.environ, PYTHONPATH=repo, JAX_PLATFORMS="cpu")
  proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads((tmp_path / "cmp" / "compare.json").read_text())
  assert result["selection"] == "split" and result["metric"] == "accuracy"
  for side in ("mebert", "peer"):
    assert set(result["headline"][side]) == {"last", "selected"}
    assert result[side]["last_step"] == 9
  # mebert's selected checkpoint, scored on the evaluation split, is its best step's weights.
  assert result["mebert"]["report_split"]["best"]["step"] == result["mebert"]["best"]["step"]
  assert "selected on the selection split" in proc.stdout


def _flat(config) -> dict:
  out = {}
  for key, value in config.to_dict().items():
    for sub, v in value.items() if isinstance(value, dict) else [(None, value)]:
      out[f"{key}.{sub}" if sub else key] = list(v) if isinstance(v, tuple) else v
  return out
