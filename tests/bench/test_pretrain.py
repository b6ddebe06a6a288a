"""The time-to-quality benchmark (issue 24): one vocabulary for both, one evaluator, each side's
clock, the time to the peer's final accuracy; end to end at toy scale as a slow test."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from mebert.bench import mlm_eval, pretrain_downstream, pretrain_mebert, pretrain_report

pytest.importorskip("torch")
pytest.importorskip("transformers")

REPO = pathlib.Path(__file__).resolve().parents[2]
TEXT = ("Émile's café served crème brûlée, 42 times a day. The quick brown fox jumps over the lazy "
        "dog! Don't split U.S.A. or e-mail addresses: x@y.org.\n" * 40)


@pytest.fixture(scope="module")
def vocab(tmp_path_factory):
  folder = tmp_path_factory.mktemp("vocab")
  text = folder / "train.txt"
  from pydoc_data.topics import topics

  mlm_eval.write_documents(str(text), [topics[k].strip() for k in sorted(topics)] + [TEXT])
  return mlm_eval.train_wordpiece(str(text), 1500, str(folder / "out"))


def test_mebert_and_transformers_read_the_vocabulary_alike(vocab):
  from mebert.data.tokenizer import load_tokenizer

  ours = load_tokenizer(vocab, lowercase=True)
  theirs = mlm_eval.hf_tokenizer(vocab)
  assert ours.vocab_size == len(theirs) > 1000
  assert [ours.pad_id, ours.unk_id, ours.cls_id, ours.sep_id, ours.mask_id] == [0, 1, 2, 3, 4]
  assert theirs.convert_tokens_to_ids(list(mlm_eval.SPECIAL_TOKENS)) == [0, 1, 2, 3, 4]
  for line in TEXT.splitlines()[:1] + ["class Foo(object): pass", "ÀÉÎ ñ 中文 \t tabs  "]:
    assert ours.encode(line) == theirs(line, add_special_tokens=False)["input_ids"], line


def test_documents_round_trip_through_the_corpus_format(tmp_path):
  from mebert.data import corpora

  docs = ["One line.\nTwo lines.", "A second document."]
  path = tmp_path / "t.txt"
  mlm_eval.write_documents(str(path), docs)
  assert mlm_eval.read_documents(str(path)) == docs
  assert corpora.load_corpus(str(path)).documents == docs  # mebert reads the same documents


def test_examples_and_the_held_out_set(vocab):
  tok = mlm_eval.hf_tokenizer(vocab)
  docs = [TEXT, "short one."]
  examples = mlm_eval.document_examples(docs, tok, seq_len=32)
  assert all(len(e) <= 32 and e[0] == tok.cls_token_id and e[-1] == tok.sep_token_id
             for e in examples)
  ids = tok(docs, add_special_tokens=False)["input_ids"]
  assert [t for e in examples for t in e[1:-1]] == ids[0] + ids[1]  # every token, in order
  a = mlm_eval.build_eval_set(docs, tok, 32, max_examples=50, seed=3)
  b = mlm_eval.build_eval_set(docs, tok, 32, max_examples=50, seed=3)
  for key in a:
    np.testing.assert_array_equal(a[key], b[key])  # drawn once: the same for every checkpoint
  labels, inputs = a["labels"], a["input_ids"]
  masked = labels >= 0
  specials = np.isin(labels, tok.all_special_ids)
  assert not specials.any() and len(labels) == 50
  real = (a["attention_mask"] > 0) & ~np.isin(inputs, [tok.cls_token_id, tok.sep_token_id])
  assert 0.13 < masked.sum() / real.sum() < 0.17  # 15% of the non-special tokens
  replaced = inputs[masked] == tok.mask_token_id
  assert 0.7 < replaced.mean() < 0.9  # 80% [MASK], the rest random or kept
  assert ((inputs[masked] == labels[masked]) | replaced).mean() > 0.85


def test_time_to_reach_interpolates_between_checkpoints():
  curve = [{"train_s": 10.0, "mlm_accuracy": 0.1}, {"train_s": 20.0, "mlm_accuracy": 0.3},
           {"train_s": 30.0, "mlm_accuracy": 0.4}]
  assert pretrain_report.time_to_reach(curve, 0.2) == pytest.approx(15.0)
  assert pretrain_report.time_to_reach(curve, 0.05) == 10.0  # nothing assumed before the first
  assert pretrain_report.time_to_reach(curve, 0.5) is None
  peer = [{"train_s": 40.0, "mlm_accuracy": 0.2, "mlm_loss": 5.0},
          {"train_s": 80.0, "mlm_accuracy": 0.3, "mlm_loss": 4.0}]
  mebert = [dict(p, mlm_loss=1.0) for p in curve]
  c = pretrain_report.compare({"mebert": mebert, "peer": peer})
  assert c["peer_final_accuracy"] == 0.3 and c["peer_time_to_peer_final_s"] == 80.0
  assert c["mebert_time_to_peer_final_s"] == 20.0 and c["time_ratio"] == pytest.approx(0.25)


def test_mebert_clock_is_read_from_its_metrics(tmp_path):
  path = tmp_path / "metrics.jsonl"
  lines = [{"step": 10, "split": "train", "steps_per_s": 0.5},  # 20 s: compile in the window
           {"step": 20, "split": "train", "steps_per_s": 2.0},
           {"step": 20, "split": "eval", "mlm_accuracy": 0.1},
           {"step": 30, "split": "train", "steps_per_s": 1.0}]
  path.write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"step": 40, "spl')
  windows = pretrain_mebert.read_windows(str(path))
  assert windows == [(10, 20.0), (20, 25.0), (30, 35.0)]  # the half-written line is skipped
  assert pretrain_mebert.time_at(windows, 20) == (25.0, False)
  assert pretrain_mebert.time_at(windows, 33) == (pytest.approx(38.0), True)  # 3 steps at 1/s
  assert pretrain_mebert._steady_rate(windows) == pytest.approx(20 / 15)


def test_encoder_copy_drops_the_untrained_heads(tmp_path):
  from safetensors.numpy import load_file, save_file

  src = tmp_path / "src"
  src.mkdir()
  tensors = {k: np.zeros(2, np.float32) for k in (
      "bert.embeddings.word_embeddings.weight", "bert.pooler.dense.weight",
      "cls.seq_relationship.bias", "cls.predictions.bias")}
  save_file(tensors, str(src / "model.safetensors"))
  (src / "config.json").write_text("{}")
  out = pretrain_downstream.encoder_copy(str(src), str(tmp_path / "dst"))
  assert sorted(load_file(os.path.join(out, "model.safetensors"))) == [
      "bert.embeddings.word_embeddings.weight", "cls.predictions.bias"]
  assert os.path.isfile(os.path.join(out, "config.json"))


def _sst2_folder(path: pathlib.Path) -> pathlib.Path:
  path.mkdir()
  rng = np.random.default_rng(0)
  words = ["good", "bad", "fine", "awful", "great", "poor", "film", "plot", "cast", "story"]
  rows = ["sentence\tlabel"]
  for i in range(240):
    sentence = " ".join(rng.choice(words, 6)) + f" {i}"
    rows.append(f"{sentence} \t{int(sentence.count('good') + sentence.count('great') > 1)}")
  (path / "train.tsv").write_text("\n".join(rows) + "\n")
  return path


@pytest.mark.slow
def test_the_benchmark_end_to_end_at_toy_scale(tmp_path, shared_data):
  out = tmp_path / "run"
  sst2 = _sst2_folder(tmp_path / "sst2")
  tiny = ["model.num_layers=1", "model.hidden_size=32", "model.num_heads=2",
          "model.intermediate_size=64"]
  cmd = [sys.executable, "-m", "mebert.bench.pretrain",
         f"--corpus={shared_data / 'gutenberg-nltk' / 'shakespeare-macbeth.txt'}",
         f"--out={out}", "--budget-s=1000", "--eval-every-s=1", "--mebert-steps=30",
         "--peer-steps=20", "--vocab-size=800", "--eval-examples=100", "--batch-size=8",
         "--seq-len=64", f"--sst2={sst2}", "--sst2-override=train.num_steps=4",
         "--sst2-override=eval.every_steps=2", "--sst2-override=train.batch_size=8"]
  cmd += [f"--mebert-override={o}" for o in tiny]
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
  proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  r = json.loads((out / "result.json").read_text())
  assert (out / "curves.png").stat().st_size > 10_000
  assert r["runs"]["mebert"]["steps"] == 30 and r["runs"]["peer"]["steps"] == 20
  assert r["runs"]["mebert"]["stopped_by"] == "num_steps" == r["runs"]["peer"]["stopped_by"]
  for side in ("mebert", "peer"):
    curve = r["curves"][side]
    # A checkpoint every second of training clock: the toy peer's 20 steps can take under one
    # second (then its final checkpoint is its only point); mebert's first window holds compiling.
    assert len(curve) >= (2 if side == "mebert" else 1)
    assert curve == sorted(curve, key=lambda p: p["train_s"])
    assert curve[-1]["step"] == r["runs"][side]["steps"]  # the final checkpoint is always scored
    assert all(p["predictions"] == r["eval_predictions"] for p in curve)  # one held-out set
  assert r["curves"]["mebert"][-1]["step"] == 30
  assert r["comparison"]["peer_final_accuracy"] == r["curves"]["peer"][-1]["mlm_accuracy"]
  assert r["recipe"]["mebert_overrides"]["data.next_sentence"] == "none"
  # The peer ran mebert's model: its checkpoint's config says the same sizes.
  peer_config = json.loads((pathlib.Path(r["curves"]["peer"][-1]["folder"]) / "config.json")
                           .read_text())
  assert (peer_config["num_hidden_layers"], peer_config["hidden_size"]) == (1, 32)
  for side in ("mebert", "peer"):
    assert r["sst2"][side]["last_step"] == 4 and 0 <= r["sst2"][side]["last_accuracy"] <= 1
  assert "mebert's time to the peer's final accuracy" in proc.stdout
