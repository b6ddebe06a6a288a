"""Quantization-aware fine-tuning (mebert.model.qat, through qwix): the QAT eval model computes
what post-training int8 (mebert.compress.quantize) deploys, unrolled and with scanned layers; the
params keep the plain model's tree; a tiny QAT run trains, writes an ordinary float32 checkpoint,
and its dev evaluation is the int8 evaluation of that checkpoint; a bad config value fails in one
line."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from compress_helpers import synthetic_tsv, tiny_config  # pylint: disable=import-error

from mebert.compress import quantize as q
from mebert.model import qat
from mebert.model.config import ModelConfig
from mebert.tasks import finetune, inference
from mebert.tasks.model import BertForTask


pytestmark = pytest.mark.usefixtures("optimized_xla")  # conftest.py


def _batch(vocab_size: int, rows: int = 4, length: int = 16):
  rng = np.random.default_rng(3)
  ids = rng.integers(5, vocab_size, size=(rows, length)).astype(np.int32)
  segments = np.ones_like(ids)
  segments[1, 9:] = 0
  ids[segments == 0] = 0
  return ids, np.zeros_like(ids), segments


@pytest.mark.parametrize("scan", [False, True])
def test_qat_eval_logits_are_the_int8_deployment_logits(scan):
  cfg = ModelConfig(vocab_size=60, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128,
                    max_position_embeddings=32, scan_layers=scan)
  model = BertForTask(cfg, "classification", 3)
  batch = _batch(cfg.vocab_size)
  plain = model.init(jax.random.key(0), *batch)
  qmodel = qat.quantize_aware(model)
  variables = qmodel.init(jax.random.key(0), *batch)
  assert set(variables) == set(plain) == {"params"}  # qwix's weight-only QT adds no state
  shapes = lambda v: jax.tree.map(lambda x: (x.shape, x.dtype), nn.unbox(v["params"]))
  assert shapes(variables) == shapes(plain)  # same tree: checkpoints, init, export unaffected
  # Wider weights than the init's 0.02 and a scaled classifier: rounding moves the logits visibly.
  params = jax.tree.map(lambda x: x * 10.0, nn.unbox(plain["params"]))
  params["classifier"]["kernel"] = params["classifier"]["kernel"] * 5.0

  fp32 = np.asarray(jax.jit(lambda p: model.apply({"params": p}, *batch))(params))
  simulated = np.asarray(jax.jit(lambda p: qmodel.apply({"params": p}, *batch))(params))
  deployed = np.asarray(jax.jit(q.dequantizing(lambda p: model.apply({"params": p}, *batch)))(
      q.quantize_params(params)))
  scale = np.abs(fp32).max()
  # Equal up to float reassociation: qwix scales the int8 product (x @ q) * s, PTQ dequantizes
  # x @ (q * s); through two layers of x10 weights that is ~1e-5 of the scale (jax 0.12: 1.4e-5).
  assert np.abs(simulated - deployed).max() <= 1e-4 * scale, np.abs(simulated - deployed).max()
  assert np.abs(simulated - fp32).max() > 1e-2 * scale  # the rounding is really simulated
  # Kernels alone (qwix) are not the whole scheme: the embedding rows are rounded too.
  kernels_only = np.asarray(jax.jit(q.dequantizing(lambda p: model.apply({"params": p}, *batch)))(
      q.quantize_params(params, embeddings=False)))
  assert np.abs(simulated - kernels_only).max() > 1e-2 * scale  # measured: 2.4e-2 to 0.4


def test_gradients_reach_every_float_weight_straight_through():
  cfg = ModelConfig(vocab_size=60, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                    max_position_embeddings=32)
  model = BertForTask(cfg, "classification", 2)
  batch = _batch(cfg.vocab_size)
  params = nn.unbox(model.init(jax.random.key(1), *batch)["params"])
  loss = lambda m: lambda p: jnp.sum(m.apply({"params": p}, *batch) ** 2)
  grads = jax.grad(loss(qat.quantize_aware(model)))(params)
  ref = jax.grad(loss(model))(params)
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    assert g.dtype == jnp.float32 and np.isfinite(g).all(), path
  kernel = ("classifier", "kernel")
  g, r = grads[kernel[0]][kernel[1]], ref[kernel[0]][kernel[1]]
  assert np.abs(g).max() > 0 and np.abs(g - r).max() < 0.1 * np.abs(r).max()  # close, not equal


@pytest.fixture(scope="module", params=[False, True], ids=["unrolled", "scan_layers"])
def qat_run(request, vocab_file, tmp_path_factory):
  root = tmp_path_factory.mktemp("qat")
  c = tiny_config(vocab_file, synthetic_tsv(root / "train.tsv", 512, seed=1))
  c.model.hidden_size, c.model.num_heads, c.model.intermediate_size = 64, 4, 128
  c.model.scan_layers = request.param
  c.train.quantize_aware = "int8"
  c.train.num_steps, c.train.log_every, c.eval.every_steps = 40, 10, 40
  workdir = root / "work"
  return c, workdir, finetune.train_and_evaluate(c, str(workdir))


def test_qat_run_trains_and_writes_a_float32_checkpoint(qat_run):
  from mebert.train.checkpoints import restore_params

  c, workdir, result = qat_run
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  losses = [r["loss"] for r in records if r["split"] == "train" and "loss" in r]
  assert len(losses) == 4 and losses[-1] < 0.8 * losses[0], losses
  assert result["accuracy"] > 0.7, result
  params, saved = restore_params(str(workdir), 40)
  assert saved["train"]["quantize_aware"] == "int8"  # the run's record says how it was trained
  cfg = ModelConfig.from_dict(c.model, vocab_size=params["bert"]["embeddings"]["word_embeddings"][
      "embedding"].shape[0])
  plain = jax.eval_shape(BertForTask(cfg, "classification", 2).init, jax.random.key(0),
                         *[jnp.zeros((1, 8), jnp.int32)] * 3)["params"]
  want = jax.tree.map(lambda x: (tuple(x.shape), np.dtype("float32")), nn.unbox(plain))
  got = jax.tree.map(lambda x: (tuple(x.shape), np.asarray(x).dtype), params)
  assert got == want


def test_qat_dev_eval_is_the_int8_eval_of_the_checkpoint(qat_run):
  """The dev metrics training reported are those of --mode=eval --quantize=int8 (PTQ of the same
  float32 weights), not of the float model."""
  c, workdir, result = qat_run
  plain = c.copy_and_resolve_references()
  plain.train.quantize_aware = "none"  # eval/predict runtimes are float either way
  int8 = plain.copy_and_resolve_references()
  int8.eval.quantize = "int8"
  fp, q8 = inference.evaluate(plain, [str(workdir)]), inference.evaluate(int8, [str(workdir)])
  assert q8["step"] == result["step"] == 40
  assert q8["loss"] == pytest.approx(result["loss"], abs=1e-5)
  assert q8["accuracy"] == pytest.approx(result["accuracy"])
  assert fp["loss"] != pytest.approx(result["loss"], abs=1e-6)  # the float model differs


@pytest.mark.parametrize("value", ["int4", "INT8", "yes"])
def test_bad_value_names_the_key(value, vocab_file, tmp_path):
  c = tiny_config(vocab_file, synthetic_tsv(tmp_path / "t.tsv", 16))
  c.train.quantize_aware = value
  with pytest.raises(ValueError, match=rf"^train\.quantize_aware='{value}' is not one of") as e:
    finetune.train_and_evaluate(c, str(tmp_path / "work"))
  assert "\n" not in str(e.value)
  assert not (tmp_path / "work").exists()  # failed before anything was written


def test_off_values_leave_the_model_alone():
  model = BertForTask(ModelConfig(vocab_size=60, hidden_size=32, num_layers=1, num_heads=2,
                                  intermediate_size=64), "classification", 2)
  for off in ("", None, "none"):
    assert qat.check_mode(off) == "none" and qat.quantize_aware(model, off or "none") is model
  assert qat.quantize_aware(model) is qat.quantize_aware(model)  # one wrapper: shared compiles
