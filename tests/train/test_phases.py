"""BERT's phase 2 continues phase 1 (issue 20, item 4): init.continue_from takes the whole train
state (parameters, optimizer moments, step) of another workdir, on a fresh data stream at a new
seq_len, and one learning-rate schedule spans both phases (train.schedule_steps on phase 1)."""

import json

import jax
import numpy as np
import optax
import pytest
from tiny_run import tiny_config

from mebert.train import checkpoints, init_from, optimizer, trainer

PHASE1, TOTAL = 4, 8


def _phase1_config():
  return tiny_config(**{"model.max_position_embeddings": 64, "train.num_steps": PHASE1,
                        "train.schedule_steps": TOTAL, "checkpoint.every_steps": 2,
                        "eval.every_steps": 100})


def _phase2_config(phase1_workdir, **overrides):
  values = {"model.max_position_embeddings": 64, "data.seq_len": 64,
            "data.max_predictions_per_seq": 10, "train.num_steps": TOTAL,
            "checkpoint.every_steps": 2, "eval.every_steps": 100,
            "init.continue_from": str(phase1_workdir),
            "data.vocab": str(phase1_workdir / "vocab" / "spm.model")}
  values.update(overrides)
  return tiny_config(**values)


@pytest.fixture(scope="module")
def phase1(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("phase1")
  trainer.train_and_evaluate(_phase1_config(), str(workdir))
  return workdir


def _logged(workdir, key) -> dict[int, float]:
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return {r["step"]: r[key] for r in records if r["split"] == "train"}


def _moments(state):
  (_, adam), = optax.tree_utils.tree_get_all_with_path(state.opt_state, "ScaleByAdamState")
  return adam


def test_phase2_continues_step_moments_and_one_schedule(phase1, tmp_path, monkeypatch):
  config = _phase2_config(phase1)
  started = []
  continued = init_from.continue_from

  def recording(*args):
    state = continued(*args)
    started.append(jax.device_get(state))  # a host copy: the state is donated to the first step
    return state

  monkeypatch.setattr(init_from, "continue_from", recording)
  final = trainer.train_and_evaluate(config, str(tmp_path))

  exp = trainer.Experiment(_phase1_config(), str(phase1))
  step, end_of_phase1 = checkpoints.restore_train_state(str(phase1), exp.abstract_state)
  assert step == PHASE1
  state = started[0]  # phase 2 before its first step: phase 1's last state, not a fresh one
  assert int(state.step) == PHASE1 and int(optimizer.schedule_count(state.opt_state)) == PHASE1
  assert int(_moments(state).count) == PHASE1
  for a, b in zip(jax.tree.leaves(_moments(state).mu), jax.tree.leaves(_moments(end_of_phase1).mu)):
    np.testing.assert_array_equal(a, b)
  assert any(np.abs(np.asarray(x)).max() > 0 for x in jax.tree.leaves(_moments(state).mu))
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(end_of_phase1.params)):
    np.testing.assert_array_equal(a, b)

  # Steps 5-8 ran at 64 tokens, each at the one 8-step schedule's rate (warmup 2, linear decay).
  whole_run = optimizer.learning_rate_schedule(config.train)
  rates = _logged(tmp_path, "learning_rate")
  assert sorted(rates) == [5, 6, 7, 8]
  np.testing.assert_allclose([rates[s] for s in range(5, 9)],
                             [float(whole_run(s - 1)) for s in range(5, 9)], rtol=1e-6)
  phase1_rates = _logged(phase1, "learning_rate")
  np.testing.assert_allclose([phase1_rates[s] for s in range(1, 5)],
                             [float(whole_run(s - 1)) for s in range(1, 5)], rtol=1e-6)
  assert final["step"] == TOTAL
  _, _, last = checkpoints.restore_params_and_step(str(tmp_path))
  assert last == TOTAL


def test_restart_schedule_keeps_the_moments_and_counts_from_zero(phase1, tmp_path):
  """NVIDIA's LAMB phase 2: phase 1's weights and moments, a schedule of its own from step 0."""
  config = _phase2_config(phase1, **{"init.restart_schedule": True, "train.num_steps": 3})
  exp = trainer.Experiment(config, str(tmp_path))
  state = init_from.maybe_initialize(exp.init_state(), config, exp)
  assert int(state.step) == 0 and int(optimizer.schedule_count(state.opt_state)) == 0
  assert int(_moments(state).count) == 0
  _, end_of_phase1 = checkpoints.restore_train_state(str(phase1), exp.abstract_state)
  for a, b in zip(jax.tree.leaves(_moments(state).nu), jax.tree.leaves(_moments(end_of_phase1).nu)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("overrides, culprit", [
    ({"model.hidden_size": 64, "model.intermediate_size": 128}, "model.hidden_size=64 (32 there)"),
    ({"train.num_steps": PHASE1}, f"ends at step {PHASE1}, and train.num_steps={PHASE1} leaves"),
])
def test_a_phase2_that_cannot_continue_phase1_fails_with_one_line(phase1, tmp_path, overrides,
                                                                   culprit):
  config = _phase2_config(phase1, **overrides)
  with pytest.raises(ValueError) as error:
    trainer.train_and_evaluate(config, str(tmp_path))
  message = str(error.value)
  assert culprit in message and "init.continue_from" in message and "\n" not in message
  assert not (tmp_path / "metrics.jsonl").exists() and not (tmp_path / "config.json").exists()


@pytest.mark.parametrize("overrides, culprit", [
    ({"train.optimizer": "lamb"}, "train.optimizer='lamb' ('adamw' there)"),
    ({"data.vocab": "OTHER"}, "is not the one it trained with"),
    ({"init.checkpoint": "elsewhere"},
     "set one of init.continue_from, init.hf and init.checkpoint"),
])
def test_continuing_checks_optimizer_tokenizer_and_sources_before_restoring(phase1, tmp_path,
                                                                            overrides, culprit):
  import types

  if overrides.get("data.vocab") == "OTHER":  # a WordPiece vocabulary, not phase 1's own
    other = tmp_path / "vocab.txt"
    other.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "a"]) + "\n")
    overrides = {"data.vocab": str(other)}
  config = _phase2_config(phase1, **overrides)
  experiment = types.SimpleNamespace(workdir=str(tmp_path))  # no state: the checks come first
  with pytest.raises(ValueError) as error:
    init_from.continue_from(config, experiment)
  message = str(error.value)
  assert culprit in message and "init.continue_from" in message and "\n" not in message


def test_phase2_configs_require_the_phase1_workdir():
  from ml_collections import config_dict

  config = tiny_config()
  config.init.continue_from = config_dict.placeholder(str)  # as configs/pretrain/*:phase2
  with pytest.raises(ValueError, match=r"^init.continue_from is required by this config"):
    init_from.maybe_initialize(None, config, None)


def test_schedule_steps_stretches_the_schedule_beyond_the_run():
  cfg = _phase1_config().train
  stretched = optimizer.learning_rate_schedule(cfg)
  cfg.schedule_steps = 0
  own = optimizer.learning_rate_schedule(cfg)
  assert float(stretched(PHASE1)) == pytest.approx(float(cfg.learning_rate) * (TOTAL - PHASE1)
                                               / (TOTAL - int(cfg.warmup_steps)))
  assert float(own(PHASE1)) == 0.0
  cfg.schedule_steps = PHASE1 - 1
  with pytest.raises(ValueError, match=r"train\.schedule_steps=3 must be 0"):
    optimizer.learning_rate_schedule(cfg)


def _recipe(name, arg):
  import importlib.util

  from tiny_run import REPO

  spec = importlib.util.spec_from_file_location(name, REPO / "configs" / "pretrain" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


@pytest.mark.parametrize("name", ["bert_base", "bert_large"])
def test_bert_recipes_phase2_continues_phase1s_schedule(name):
  """Devlin et al.: 90% of 1M steps at 128 tokens, the rest at 512, one schedule (10k warmup,
  linear decay to 0 at 1M); WordPiece-token masking, as in the 2018 recipe."""
  one, two = _recipe(name, "phase1"), _recipe(name, "phase2")
  assert (one.train.num_steps, two.train.num_steps) == (900_000, 1_000_000)
  assert (one.data.seq_len, two.data.seq_len) == (128, 512)
  assert two.init.continue_from is None  # required: phase 1's workdir
  first = optimizer.learning_rate_schedule(one.train)
  second = optimizer.learning_rate_schedule(two.train)
  for step in (0, 5_000, 10_000, 899_999, 900_000, 999_999):
    assert float(first(step)) == pytest.approx(float(second(step)), rel=1e-6)
  assert float(second(900_000)) == pytest.approx(1e-4 * 100_000 / 990_000, rel=1e-6)
  assert float(second(1_000_000)) == 0.0
  assert not one.data.whole_word_masking and not two.data.whole_word_masking


def test_lamb_recipe_is_nvidias_two_phases_with_a_schedule_each():
  one, two = _recipe("bert_large", "lamb"), _recipe("bert_large", "lamb_phase2")
  batch, steps, rate = "batch_size", "num_steps", "learning_rate"
  assert (one.train[batch], one.train[steps], one.train[rate]) == (65_536, 7_038, 6e-3)
  assert (two.train[batch], two.train[steps], two.train[rate]) == (32_768, 1_563, 4e-3)
  assert two.init.restart_schedule and two.init.continue_from is None
  assert optimizer.schedule_length(two.train) == 1_563
