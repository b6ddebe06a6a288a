"""ELECTRA: the generator's shape, shared embeddings, replaced-token labels, no gradient through the
sampling, the step on a 2x2x2 mesh, and the trainer's objective switch end to end (its
discriminator then exports to transformers' ElectraForPreTraining)."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import config_dict

from mebert.model.config import ModelConfig
from mebert.model.electra import ElectraConfig, ElectraForPreTraining
from mebert.parallel import mesh as mesh_lib
from mebert.train import electra_steps, optimizer, steps
from mebert.train.defaults import pretrain_defaults
from tiny_run import tiny_config

DISC = ModelConfig(family="electra", vocab_size=64, hidden_size=64, num_layers=1, num_heads=2,
                   intermediate_size=128, embedding_size=32, max_position_embeddings=16,
                   dropout_rate=0.0, attention_dropout_rate=0.0)
ELECTRA = ElectraConfig(generator_size=0.25)  # generator hidden 16: projected from 32


def _batch(rows=8, length=16, preds=4, seed=0):
  rng = np.random.default_rng(seed)
  seg = np.ones((rows, length), np.int32)
  seg[:, -3:] = 0  # padding
  positions = np.tile(np.array([1, 5, 9, 0], np.int32), (rows, 1))
  weights = np.tile(np.array([1, 1, 1, 0], np.float32), (rows, 1))  # the last slot is unused
  return {"input_ids": rng.integers(5, 64, (rows, length)).astype(np.int32),
          "token_type_ids": np.zeros((rows, length), np.int32), "segment_ids": seg,
          "positions": np.tile(np.arange(length, dtype=np.int32), (rows, 1)),
          "masked_lm_positions": positions,
          "masked_lm_ids": rng.integers(5, 64, (rows, preds)).astype(np.int32),
          "masked_lm_weights": weights, "next_sentence_labels": -np.ones(rows, np.int32)}


def _init(cfg=DISC, electra=ELECTRA):
  batch = _batch()
  model = ElectraForPreTraining(cfg, electra)
  boxed = jax.jit(lambda r, s: model.init(
      {"params": r, "sample": s}, **{k: batch[k][:1] for k in steps.MODEL_INPUTS},
      masked_lm_positions=batch["masked_lm_positions"][:1])["params"])(jax.random.key(0),
                                                                       jax.random.key(1))
  return model, boxed, batch


def test_generator_follows_google_research_electra():
  small = ModelConfig(family="electra", hidden_size=256, num_heads=4, intermediate_size=1024,
                      embedding_size=128)
  gen = ElectraConfig().generator_config(small)
  assert (gen.hidden_size, gen.num_heads, gen.intermediate_size, gen.num_layers) == (64, 1, 256, 12)
  assert gen.embedding_width == 128  # shared with the discriminator
  with pytest.raises(ValueError, match="rtd_weight=0"):
    ElectraConfig(rtd_weight=0)
  with pytest.raises(ValueError, match=r"unknown key\(s\) \['generator_hidden'\]"):
    ElectraConfig.from_dict({"generator_hidden": 0.25})


def test_shared_embeddings_and_replaced_token_labels():
  model, boxed, batch = _init()
  # Every parameter carries logical axis names (the mesh shards by them).
  leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  assert all(isinstance(x, nn.LogicallyPartitioned) for x in leaves)
  params = nn.unbox(boxed)
  assert "embeddings" not in params["generator"]  # the generator reads the discriminator's
  assert params["generator"]["embeddings_project"]["kernel"].shape == (32, 16)
  assert params["bert"]["embeddings_project"]["kernel"].shape == (32, 64)
  out = jax.jit(lambda p, b: model.apply({"params": p}, **{k: b[k] for k in electra_steps.BATCH_KEYS},
                                         rngs={"sample": jax.random.key(3)}))(params, batch)
  labels = np.asarray(out["rtd_labels"])
  assert out["rtd_logits"].shape == (8, 16) and out["mlm_logits"].shape == (8, 4, 64)
  # Only masked slots with weight can be replaced: never the unused slot's position 0, padding.
  assert labels[:, [0, 2, 3, 4, 6, 7, 8] + list(range(10, 16))].sum() == 0
  assert labels[:, [1, 5, 9]].sum() > 0  # a random generator rarely guesses the original


def test_sampling_carries_no_gradient():
  """Through the replaced-token loss only the discriminator (and the shared embeddings) learn; the
  generator learns from its MLM loss alone."""
  model, boxed, batch = _init()
  params = nn.unbox(boxed)
  ones = jnp.ones(())

  @jax.jit
  def grads(p):  # one compile for both parts of the loss
    sums = lambda p: electra_steps.electra_sums(p, batch, model, jax.random.key(0), ones * 12,
                                                ones * 104, ELECTRA)[1]
    rtd = jax.grad(lambda p: sums(p)["rtd_loss"])(p)
    mlm = jax.grad(lambda p: sums(p)["mlm_loss"])(p)
    return rtd, mlm

  rtd_only, mlm_only = grads(params)
  norm = lambda tree: float(sum(jnp.sum(jnp.abs(x)) for x in jax.tree.leaves(tree)))
  assert norm(rtd_only["generator"]) == 0 and norm(rtd_only["cls"]) == 0
  assert norm(rtd_only["bert"]["encoder"]) > 0
  assert norm(rtd_only["bert"]["embeddings"]["word_embeddings"]) > 0
  assert norm(mlm_only["generator"]) > 0 and norm(mlm_only["bert"]["encoder"]) == 0


def test_step_trains_on_a_2x2x2_mesh():
  mesh = mesh_lib.make_mesh(config_dict.ConfigDict({"data": 2, "fsdp": 2, "tensor": 2}))
  train_cfg = pretrain_defaults().train
  train_cfg.num_steps, train_cfg.warmup_steps, train_cfg.learning_rate = 10, 0, 3e-3
  tx, schedule = optimizer.make_optimizer(train_cfg), optimizer.learning_rate_schedule(train_cfg)
  batch = _batch()
  cfg = DISC.replace(dropout_rate=0.1)
  init = functools.partial(electra_steps.init_train_state, model=ElectraForPreTraining(cfg, ELECTRA),
                           tx=tx, example_batch=jax.tree.map(lambda x: jnp.asarray(x[:1]), batch))
  rules = mesh_lib.DEFAULT_RULES
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    shardings = mesh_lib.logical_shardings(jax.eval_shape(init, jax.random.key(0)), mesh, rules)
    state = jax.jit(lambda r: nn.unbox(init(r)), out_shardings=shardings)(jax.random.key(0))
    step = jax.jit(functools.partial(electra_steps.train_step,
                                     model=ElectraForPreTraining(cfg, ELECTRA, False), tx=tx,
                                     schedule=schedule, seed=0, electra=ELECTRA),
                   in_shardings=(shardings, mesh_lib.batch_sharding(mesh)),
                   out_shardings=(shardings, None), donate_argnums=0)
    losses, rtd = [], []
    for _ in range(4):
      state, metrics = step(state, mesh_lib.global_batch(batch, mesh))
      losses.append(float(metrics["loss"]))
      rtd.append(steps.summarize(jax.device_get(metrics))["rtd_loss"])
  assert all(np.isfinite(losses)) and losses[-1] < losses[0] and rtd[-1] < rtd[0]
  table = state.params["bert"]["embeddings"]["word_embeddings"]["embedding"]
  assert table.sharding.spec[0] == "tensor"  # vocabulary-parallel, as BERT's


@pytest.mark.slow  # a tokenizer, a 4-step run, an eval and an export: ~1-2 min on 2 cores
def test_trainer_objective_switch_end_to_end(tmp_path):
  from mebert.train import checkpoints, trainer

  c = tiny_config(**{"train.num_steps": 4, "checkpoint.every_steps": 4, "eval.every_steps": 4})
  c.model.family, c.model.embedding_size = "electra", 16
  c.train.objective = "electra"
  c.electra = config_dict.ConfigDict({"generator_size": 0.5})
  with pytest.raises(ValueError, match="data.next_sentence='nsp' but train.objective='electra'"):
    trainer.Experiment(c, str(tmp_path / "bad"))
  c.data.next_sentence = "none"
  final = trainer.train_and_evaluate(c, str(tmp_path / "wd"))
  for key in ("rtd_accuracy", "rtd_loss", "mlm_accuracy", "rtd_replaced_fraction"):
    assert np.isfinite(final[key]), key
  params, saved = checkpoints.restore_params(str(tmp_path / "wd"))
  assert {"bert", "generator", "cls", "discriminator_predictions"} <= set(params)
  assert saved["train"]["objective"] == "electra"
  if _torch():  # the discriminator exports to transformers, through the parity gate
    from mebert.interop.workdir import export_workdir

    report = export_workdir(str(tmp_path / "wd"), str(tmp_path / "hf"))
    assert report.architecture == "ElectraForPreTraining"
    assert max(report.parity.values()) <= 1e-4 and "rtd_logits" in report.parity
  # The discriminator fine-tunes like any encoder, with ELECTRA's classification head.
  from mebert.tasks import finetune
  from mebert.tasks.defaults import finetune_defaults

  rows = ["sentence\tlabel"] + [f"the film is {w} number {i}\t{int(w == 'good')}"
                                 for i in range(40) for w in ("good", "bad")]
  (tmp_path / "train.tsv").write_text("\n".join(rows) + "\n")
  ft = finetune_defaults()
  ft.init.checkpoint = str(tmp_path / "wd")
  ft.data.train_files = ft.data.eval_files = str(tmp_path / "train.tsv")
  ft.data.seq_len, ft.data.buckets = 32, (32,)
  ft.train.batch_size, ft.eval.batch_size, ft.train.num_steps = 16, 16, 4
  ft.train.learning_rate, ft.train.warmup_steps, ft.train.layer_decay = 1e-3, 1, 0.8
  ft.checkpoint.async_save = False
  result = finetune.train_and_evaluate(ft, str(tmp_path / "ft"))
  assert 0.0 <= result["accuracy"] <= 1.0
  tuned, _ = checkpoints.restore_params(str(tmp_path / "ft"))
  assert set(tuned["classifier"]) == {"dense", "out_proj"} and "pooler" not in tuned["bert"]


def _torch() -> bool:
  from mebert.interop.parity import torch_available

  return torch_available()
