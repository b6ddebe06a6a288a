"""Distillation: each loss against numpy, the encoder's attention maps against a manual softmax, the
student initialisation, short runs (loss goes down, eval/export read the workdir, resume is exact),
the inference-cost bench, and one-line errors for bad configs.

One tiny teacher (hidden 64, 2 layers, 4 heads) is fine-tuned for 30 steps on synthetic sentiment
and shared; students are its layer 1 (copied, width 64) or a random 1-layer width-32 model with 2
heads (projection and head-averaged attention maps).
"""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from compress_helpers import synthetic_tsv, tiny_config  # pylint: disable=import-error

from mebert.compress import distill, distill_steps
from mebert.model.attention import ATTENTION_PROBS, segment_mask
from mebert.model.config import ModelConfig
from mebert.model.encoder import HIDDEN_STATES, BertModel
from mebert.tasks import finetune


pytestmark = pytest.mark.usefixtures("optimized_xla")  # conftest.py


def _softmax(x, axis=-1):
  e = np.exp(x - x.max(axis, keepdims=True))
  return e / e.sum(axis, keepdims=True)


# --- the losses against numpy ---------------------------------------------------------------------


def test_soft_kl_matches_numpy():
  rng = np.random.default_rng(0)
  s, t = rng.normal(size=(2, 5, 3)) * 3, rng.normal(size=(2, 5, 3)) * 3
  for temperature in (1.0, 2.0, 4.0):
    p, q = _softmax(t / temperature), _softmax(s / temperature)
    want = temperature ** 2 * (p * np.log(p / q)).sum(-1)
    got = distill_steps.soft_kl(jnp.asarray(s, jnp.float32), jnp.asarray(t, jnp.float32), temperature)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  assert np.abs(distill_steps.soft_kl(jnp.asarray(s), jnp.asarray(s), 2.0)).max() < 1e-6


def test_hidden_and_attention_losses_match_numpy():
  rng = np.random.default_rng(1)
  a, b = rng.normal(size=(2, 6, 8)), rng.normal(size=(2, 6, 8))
  np.testing.assert_allclose(distill_steps.hidden_mse(jnp.asarray(a), jnp.asarray(b)),
                             ((a - b) ** 2).mean(-1), rtol=1e-5)
  # Two packed segments in row 0, padding at the end of both rows.
  seg = np.array([[1, 1, 1, 2, 2, 0], [1, 1, 1, 1, 0, 0]], np.int32)
  mask = np.asarray(segment_mask(jnp.asarray(seg)))

  def probs(heads):
    scores = rng.normal(size=(2, heads, 6, 6)) * 2
    return np.where(mask, _softmax(np.where(mask, scores, -1e30)), 0.0) * (seg != 0)[:, None, :, None]

  def reference(ps, pt):
    if ps.shape[1] != pt.shape[1]:
      ps, pt = ps.mean(1, keepdims=True), pt.mean(1, keepdims=True)
    out = np.zeros((2, 6))
    for i in range(2):
      for q in range(6):
        if seg[i, q] == 0:
          continue
        keys = (seg[i] == seg[i, q])
        out[i, q] = np.mean([(pt[i, h, q, keys] * np.log(pt[i, h, q, keys] / ps[i, h, q, keys])).sum()
                             for h in range(ps.shape[1])])
    return out

  for heads_s, heads_t in ((4, 4), (2, 4)):
    ps, pt = probs(heads_s), probs(heads_t)
    got = distill_steps.attention_kl(jnp.asarray(ps, jnp.float32), jnp.asarray(pt, jnp.float32),
                                     jnp.asarray(mask))
    np.testing.assert_allclose(got, reference(ps, pt), rtol=1e-4, atol=1e-6)
    assert np.all(np.asarray(got)[seg == 0] == 0)


def _tiny(hidden, heads, layers, **kw):
  return ModelConfig(vocab_size=40, hidden_size=hidden, num_layers=layers, num_heads=heads,
                     intermediate_size=2 * hidden, max_position_embeddings=16,
                     attention_backend="xla", **kw)


def test_objective_matches_numpy_recomputation():
  """distill_sums on a random narrow student (projection 32 -> 64, head-averaged maps) and a
  2-layer teacher, against numpy from the models' own outputs: pairs, projection, weights, means."""
  from mebert.tasks.model import BertForTask

  student = BertForTask(_tiny(32, 2, 1, dropout_rate=0.0, attention_dropout_rate=0.0),
                        "classification", 3)
  teacher = BertForTask(_tiny(64, 4, 2), "classification", 3)
  projection = distill_steps.HiddenProjection(64)
  ids = np.array([[2, 7, 9, 11, 3, 0], [2, 5, 3, 0, 0, 0], [0] * 6], np.int32)
  batch = {"input_ids": ids, "token_type_ids": np.zeros_like(ids),
           "segment_ids": (ids != 0).astype(np.int32), "labels": np.array([0, 2, 0], np.int32),
           "weights": np.array([1.0, 1.0, 0.0], np.float32)}
  key = jax.random.key(0)
  sp, tp, pp = (jax.tree.map(np.asarray, nn.unbox(v["params"])) for v in (
      jax.jit(student.init)(key, ids), jax.jit(teacher.init)(jax.random.key(1), ids),
      projection.init(key, np.zeros((1, 1, 32), np.float32))))
  loss = distill_steps.LossConfig(2.0, 0.7, 0.3, 0.5, 0.25, layer_pairs=((0, 1),))
  totals = (np.float32(2.0), np.float32(8.0))
  got, sums = distill_steps.distill_sums(
      {"student": sp, "projection": pp}, tp, batch, jax.random.key(2), student=student,
      teacher=teacher, projection=projection, kind="classification", loss=loss, totals=totals)

  def run(model, params):
    cols = [HIDDEN_STATES, ATTENTION_PROBS]
    logits, sown = model.apply({"params": params}, ids, np.zeros_like(ids), batch["segment_ids"],
                               mutable=cols)
    return (np.asarray(logits), [np.asarray(h) for h in distill_steps.sown_hidden_states(sown)],
            [np.asarray(a) for a in distill_steps.sown_attention(sown)])

  (s_log, s_h, s_a), (t_log, t_h, t_a) = run(student, sp), run(teacher, tp)
  w, real = batch["weights"], batch["segment_ids"] != 0
  p_t, p_s = _softmax(t_log / 2.0), _softmax(s_log / 2.0)
  soft = (4.0 * (p_t * np.log(p_t / p_s)).sum(-1) * w).sum() / 2.0
  hard = (-np.log(_softmax(s_log)[np.arange(3), batch["labels"]]) * w).sum() / 2.0
  projected = s_h[1] @ pp["dense"]["kernel"] + pp["dense"]["bias"]
  hidden = (((projected - t_h[2]) ** 2).mean(-1) * real).sum() / 8.0
  mask = np.asarray(segment_mask(jnp.asarray(batch["segment_ids"])))
  a_s, a_t = s_a[0].mean(1, keepdims=True), t_a[1].mean(1, keepdims=True)
  kl = np.where(mask, a_t * (np.log(np.maximum(a_t, 1e-38)) - np.log(np.maximum(a_s, 1e-38))), 0)
  attention = kl.sum(-1).mean(1).sum() / 8.0
  want = 0.7 * soft + 0.3 * hard + 0.5 * hidden + 0.25 * attention
  assert float(got) == pytest.approx(want, rel=1e-4)
  assert float(sums["hidden_sum"]) / 8.0 == pytest.approx(hidden, rel=1e-4)
  # Near-uniform maps at random init: a KL of ~1e-4, summed in float32 (hence the absolute bound).
  assert float(sums["attention_sum"]) / 8.0 == pytest.approx(attention, rel=1e-3, abs=1e-7)
  assert min(soft, hard, hidden, attention) > 0


# --- the encoder's attention maps -----------------------------------------------------------------


def test_attention_maps_match_manual_softmax_and_default_path_is_unchanged():
  cfg = _tiny(32, 4, 2)
  ids = jnp.array([[2, 7, 9, 11, 3, 0, 0], [2, 5, 6, 3, 8, 9, 3]], jnp.int32)
  types = jnp.array([[0] * 7, [0, 0, 0, 0, 1, 1, 1]], jnp.int32)
  model = BertModel(cfg)
  params = jax.tree.map(np.asarray, nn.unbox(model.init(jax.random.key(0), ids, types)["params"]))
  default = model.apply({"params": params}, ids, types, return_hidden_states=True)
  asked, sown = model.apply({"params": params}, ids, types, return_hidden_states=True,
                            mutable=[ATTENTION_PROBS, HIDDEN_STATES])
  np.testing.assert_array_equal(default.sequence_output, asked.sequence_output)
  for a, b in zip(default.hidden_states, distill_steps.sown_hidden_states(sown)):
    np.testing.assert_array_equal(a, b)
  maps = distill_steps.sown_attention(sown)
  assert len(maps) == 2 and maps[0].shape == (2, 4, 7, 7)
  real = np.asarray(ids != 0)
  for layer in range(2):  # softmax(Q K^T / sqrt(d)) over the real keys, from the layer's input
    p = params["encoder"][f"layer_{layer}"]["attention"]["self"]
    x = np.asarray(default.hidden_states[layer])
    q, k = ((x @ p[n]["kernel"] + p[n]["bias"]).reshape(2, 7, 4, 8) for n in ("query", "key"))
    scores = np.einsum("bqnd,bknd->bnqk", q, k) / np.sqrt(8)
    want = _softmax(np.where(real[:, None, None, :], scores, -np.inf))
    got = np.asarray(maps[layer])
    np.testing.assert_allclose(got[real[:, None, :, None].repeat(4, 1).repeat(7, 3)],
                               want[real[:, None, :, None].repeat(4, 1).repeat(7, 3)], atol=1e-5)
    assert np.all(got[0][:, real[0]][:, :, ~real[0]] == 0)  # real queries: padding keys get 0
  # Scanned layers sow one stacked entry with the same maps.
  scanned = BertModel(cfg.replace(scan_layers=True))
  from mebert.interop.hf_names import stack_layers

  stacked = stack_layers({"bert": params}, 2)["bert"]
  _, sown_scan = scanned.apply({"params": stacked}, ids, types, mutable=[ATTENTION_PROBS])
  for a, b in zip(maps, distill_steps.sown_attention(sown_scan)):
    np.testing.assert_allclose(a, b, atol=1e-6)


# --- runs -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def teacher(vocab_file, tmp_path_factory):
  root = tmp_path_factory.mktemp("distill")
  c = tiny_config(vocab_file, synthetic_tsv(root / "train.tsv", 512, seed=1))
  c.model.hidden_size, c.model.num_heads, c.model.intermediate_size = 64, 4, 128
  c.train.num_steps, c.eval.every_steps = 30, 30
  result = finetune.train_and_evaluate(c, str(root / "teacher"))
  return c, root / "teacher", result


def _distill_config(teacher, **distill_keys):
  c, workdir, _ = teacher
  d = distill.distill_defaults(c.copy_and_resolve_references(), str(workdir))
  d.distill.temperature, d.distill.hidden_weight, d.distill.attention_weight = 2.0, 1.0, 1.0
  d.train.num_steps, d.eval.every_steps, d.train.log_every = 20, 10, 5
  for key, value in distill_keys.items():
    d.distill[key] = value
  return d


def _narrow(d):
  d.model.hidden_size, d.model.num_heads, d.model.num_layers, d.model.intermediate_size = 32, 2, 1, 64
  return d


def _params(workdir, step=None):
  from mebert.train.checkpoints import restore_params

  return jax.tree.map(np.asarray, restore_params(str(workdir), step)[0])


@pytest.fixture(scope="module")
def copied_run(teacher, tmp_path_factory):
  d = _distill_config(teacher, student_layers=(1,))
  workdir = tmp_path_factory.mktemp("copied")
  return d, workdir, distill.run(d, str(workdir), "train")


@pytest.mark.parametrize("source", ["workdir", "hf"])
def test_student_init_copies_the_chosen_teacher_layers(teacher, tmp_path, source):
  from mebert.interop.workdir import export_workdir
  from mebert.train.checkpoints import Checkpointer

  d = _distill_config(teacher, student_layers=(1,))
  if source == "hf":  # the same teacher as a Hugging Face BertForSequenceClassification folder
    export_workdir(str(teacher[1]), str(tmp_path / "hf"), step=30, parity=False)
    d.distill.teacher = str(tmp_path / "hf")
  job = distill.Distillation(d, str(tmp_path / "w"))
  assert job.labels == ["0", "1"] and job.source.model_config.num_layers == 1
  step, state, _ = job.initial_state(Checkpointer(str(tmp_path / "w"), keep=1))
  got, want = jax.tree.map(np.asarray, state.params), _params(teacher[1])
  assert step == 0 and set(got["bert"]["encoder"]) == {"layer_0"}
  jax.tree.map(np.testing.assert_array_equal, got["bert"]["encoder"]["layer_0"],
               want["bert"]["encoder"]["layer_1"])
  for part in ("embeddings", "pooler"):
    jax.tree.map(np.testing.assert_array_equal, got["bert"][part], want["bert"][part])
  jax.tree.map(np.testing.assert_array_equal, got["classifier"], want["classifier"])
  assert state.opt_state[-1].params == {}  # same width: no projection


def test_short_run_lowers_the_distillation_loss_and_eval_reads_the_workdir(copied_run, teacher):
  d, workdir, result = copied_run
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  distilled = [r for r in records if "distill_loss" in r]
  losses = [r["distill_loss"] for r in distilled]
  assert len(losses) == 4 and losses[-1] < 0.8 * losses[0], losses
  assert {"distill_soft", "distill_hidden", "distill_attention", "distill_hard"} <= set(distilled[0])
  assert result["teacher"] == f"{teacher[1]}@30" and result["train_step_compiles"] == 1
  params = _params(workdir)
  assert set(params) == {"bert", "classifier"} and set(params["bert"]["encoder"]) == {"layer_0"}
  evaluated = distill.run(d, str(workdir), "eval")
  assert evaluated["step"] == result["step"] and evaluated["accuracy"] == pytest.approx(result["accuracy"])
  assert evaluated["accuracy"] > 0.7  # learnable in a few steps; the teacher is better than chance


def test_narrow_student_uses_a_projection_and_resumes_exactly(teacher, tmp_path,
                                                              crash_after_saving):
  d = _narrow(_distill_config(teacher))
  full = distill.run(d, str(tmp_path / "full"), "train")
  crash_after_saving(10)
  with pytest.raises(KeyboardInterrupt):
    distill.run(d, str(tmp_path / "resumed"), "train")
  resumed = distill.run(d, str(tmp_path / "resumed"), "train")
  assert resumed["last_step"] == full["last_step"] == 20
  for key in ("accuracy", "loss"):
    assert resumed[key] == full[key]
  a, b = _params(tmp_path / "resumed", 20), _params(tmp_path / "full", 20)
  jax.tree.map(np.testing.assert_array_equal, a, b)  # bitwise
  assert a["bert"]["embeddings"]["word_embeddings"]["embedding"].shape[1] == 32
  from mebert.train.checkpoints import Checkpointer

  job = distill.Distillation(d, str(tmp_path / "full"))  # restores the projection with the state
  _, state, _ = job.initial_state(Checkpointer(str(tmp_path / "full"), keep=1))
  kernel = np.asarray(state.opt_state[-1].params["dense"]["kernel"])
  assert kernel.shape == (32, 64) and np.abs(np.asarray(state.opt_state[-1].params["dense"]["bias"])).max() > 0


def test_export_hf_matches_transformers_logits(copied_run, tmp_path):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  from mebert.interop.workdir import export_workdir
  from mebert.tasks.model import BertForTask

  _, workdir, _ = copied_run
  export_workdir(str(workdir), str(tmp_path / "hf"), parity=False)
  hf = transformers.BertForSequenceClassification.from_pretrained(str(tmp_path / "hf")).eval()
  from mebert.train.checkpoints import restore_params

  params, saved = restore_params(str(workdir))
  cfg = ModelConfig.from_dict(saved["model"])
  ids = np.array([[2, 9, 12, 15, 3, 0, 0], [2, 20, 21, 22, 23, 11, 3]], np.int64)
  mask = (ids != 0).astype(np.int64)
  ours = BertForTask(cfg, "classification", 2).apply({"params": params}, ids.astype(np.int32),
                                                      np.zeros_like(ids, np.int32), mask.astype(np.int32))
  with torch.no_grad():
    theirs = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
  np.testing.assert_allclose(np.asarray(ours), theirs, atol=1e-5)
  assert hf.config.num_hidden_layers == 1 and hf.config.id2label == {0: "0", 1: "1"}


def test_bench_reports_the_student_cheaper(copied_run, teacher):
  from mebert.compress import bench_distill

  d, workdir, _ = copied_run
  out = bench_distill.measure(d, str(teacher[1]), str(workdir), rounds=1)
  t, s = out["teacher"], out["student"]
  assert out["examples"] > 40 and out["batch_size"] == 32
  assert t["num_layers"] == 2 and s["num_layers"] == 1 and s["examples_per_s"] > 0
  ratio = out["student_over_teacher"]
  # XLA's count is lower than the analytic one: sequence heads run their last layer at the [CLS]
  # rows only (BertModel pooled_only), which leaves the 1-layer student little but K and V.
  assert 0.4 < ratio["flops_per_example"] < 0.6 and 0.1 < ratio["xla_flops_per_example"] < 0.4
  assert 0 < t["accuracy"] <= 1 and json.dumps(out)


def test_bench_takes_the_data_from_the_student_when_the_config_names_none(copied_run, teacher):
  """As configs/distill/*.py: no data files in the config; training read the teacher's, and the
  bench reads the same examples from the student's saved config."""
  from mebert.compress import bench_distill

  d, workdir, _ = copied_run
  bare = d.copy_and_resolve_references()
  bare.data.train_files, bare.data.eval_files = "", ""
  out = bench_distill.measure(bare, str(teacher[1]), str(workdir), rounds=1)
  full = bench_distill.measure(d, str(teacher[1]), str(workdir), rounds=1)
  assert out["examples"] == full["examples"] > 40
  assert out["student"]["accuracy"] == full["student"]["accuracy"]


# --- bad input ------------------------------------------------------------------------------------


def test_bad_configs_fail_with_one_line_naming_the_key(teacher, tmp_path):
  d = _distill_config(teacher, student_layers=(0, 2))
  with pytest.raises(ValueError, match=r"distill.student_layers=\(0, 2\): teacher layer 2 does "
                     r"not exist .* has 2 layers"):
    distill.run(d, str(tmp_path / "a"), "train")
  d = _distill_config(teacher, layer_map=(5,))
  with pytest.raises(ValueError, match=r"distill.layer_map=\(5,\): teacher layer 5"):
    distill.run(_narrow(d), str(tmp_path / "b"), "train")
  d = _distill_config(teacher)
  d.distill.teacher = str(tmp_path / "nowhere")
  with pytest.raises(ValueError, match=rf"distill.teacher={tmp_path / 'nowhere'}: no such directory"):
    distill.run(d, str(tmp_path / "c"), "train")
  d.distill.teacher = str(tmp_path)
  with pytest.raises(ValueError, match="neither a mebert fine-tuning workdir"):
    distill.run(d, str(tmp_path / "c"), "train")
  assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()  # nothing written


def _cli(*args, timeout=600):
  import os
  import pathlib
  import subprocess
  import sys

  repo = pathlib.Path(__file__).resolve().parents[2]
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(repo))
  return subprocess.run([sys.executable, "-m", *args], cwd=repo, env=env, capture_output=True,
                        text=True, timeout=timeout)


def test_cli_routes_distill_configs(copied_run, tmp_path):
  """The entrypoint: --mode=eval --quantize=int8 on the student's workdir with the distillation
  config file; a missing teacher is one error line."""
  d, workdir, result = copied_run
  cfg = "--config=configs/distill/sst2_minilm_3layer.py"
  flags = [f"--config.data.train_files={d.data.train_files}", "--config.data.holdout_fraction=0.25",
           "--config.data.seq_len=32", "--config.data.buckets=(32,)", "--config.eval.batch_size=32"]
  run = _cli("mebert.train", cfg, f"--workdir={workdir}", "--mode=eval", "--quantize=int8", *flags)
  assert run.returncode == 0, run.stderr[-3000:]
  metrics = json.loads(run.stdout.strip().splitlines()[-1])
  assert metrics["step"] == result["step"] and abs(metrics["accuracy"] - result["accuracy"]) <= 0.03
  bad = _cli("mebert.train", cfg, f"--workdir={tmp_path / 'x'}", *flags,
             f"--config.distill.teacher={tmp_path / 'missing'}")
  assert bad.returncode != 0
  assert bad.stderr.strip().splitlines()[-1] == (
      f"error: distill.teacher={tmp_path / 'missing'}: no such directory")
  assert not (tmp_path / "x").exists()
