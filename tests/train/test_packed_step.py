"""Packed equals unpacked: a tiny BERT gives every example the same MLM and NSP logits, losses and
gradients whether it sits alone in a row or packed with others (mebert.data.packing's rows)."""

import functools

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mebert.data import packing
from mebert.model.config import ModelConfig
from mebert.model.pretraining import BertForPreTraining
from mebert.train import steps

VOCAB, LENGTH, PREDS, SLOTS = 64, 32, 4, 3
CLS, SEP, MASK = 1, 2, 3


def _examples(count: int, seed: int = 0) -> list[dict]:
  """Compact examples as ExampleMaker.compact makes them: [CLS] A [SEP] B [SEP], 1-4 predictions."""
  rng = np.random.default_rng(seed)
  out = []
  for i in range(count):
    a, b = rng.integers(5, VOCAB, int(rng.integers(1, 6))), rng.integers(5, VOCAB, int(rng.integers(1, 9)))
    ids = np.concatenate([[CLS], a, [SEP], b, [SEP]]).astype(np.int32)
    types = np.zeros(len(ids), np.int32)
    types[len(a) + 2:] = 1
    maskable = np.flatnonzero(~np.isin(ids, [CLS, SEP]))
    positions = np.sort(rng.choice(maskable, min(len(maskable), int(rng.integers(1, PREDS + 1))),
                                   replace=False)).astype(np.int32)
    targets = ids[positions].copy()
    ids[positions] = MASK
    out.append({"input_ids": ids, "token_type_ids": types, "masked_lm_positions": positions,
                "masked_lm_ids": targets, "next_sentence_labels": np.array([i % 2], np.int32),
                "example_ids": np.array([i], np.int64)})
  return out


def _alone(examples: list[dict]) -> dict:
  """Each example in its own row (the unpacked layout of ExampleMaker.__call__)."""
  rows = len(examples)
  batch = {"input_ids": np.zeros((rows, LENGTH), np.int32), "token_type_ids": np.zeros((rows, LENGTH), np.int32),
           "segment_ids": np.zeros((rows, LENGTH), np.int32),
           "positions": np.tile(np.arange(LENGTH, dtype=np.int32), (rows, 1)),
           "masked_lm_positions": np.zeros((rows, PREDS), np.int32),
           "masked_lm_ids": np.zeros((rows, PREDS), np.int32),
           "masked_lm_weights": np.zeros((rows, PREDS), np.float32),
           "next_sentence_labels": np.array([e["next_sentence_labels"][0] for e in examples], np.int32)}
  for r, e in enumerate(examples):
    n, p = len(e["input_ids"]), len(e["masked_lm_positions"])
    batch["input_ids"][r, :n], batch["token_type_ids"][r, :n] = e["input_ids"], e["token_type_ids"]
    batch["segment_ids"][r, :n] = 1
    batch["masked_lm_positions"][r, :p], batch["masked_lm_ids"][r, :p] = e["masked_lm_positions"], e["masked_lm_ids"]
    batch["masked_lm_weights"][r, :p] = 1.0
  return batch


def _packed(examples: list[dict]) -> tuple[dict, np.ndarray]:
  layout = packing.PackLayout(LENGTH, SLOTS, packing.automatic_max_predictions(LENGTH, PREDS, 0.15, SLOTS))
  source = grain.MapDataset.source(examples).to_iter_dataset()
  rows = list(packing.packed_stream(source, layout, pad_id=0, seed=0, num_bins=4))
  batch = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
  return batch, batch.pop("example_ids")


@functools.partial(jax.jit, static_argnums=(0, 3))
def _outputs(model, params, batch, with_grads: bool):
  def loss(p):
    return steps.pretraining_sums(p, batch, model, jax.random.key(0),
                                  jnp.sum(batch["masked_lm_weights"]),
                                  jnp.sum((batch["next_sentence_labels"] >= 0).astype(jnp.float32)))

  if with_grads:
    (_, sums), grads = jax.value_and_grad(loss, has_aux=True)(params)
  else:
    (_, sums), grads = loss(params), None
  logits = model.apply({"params": params}, **{k: batch[k] for k in steps.MODEL_INPUTS},
                       masked_lm_positions=batch["masked_lm_positions"],
                       cls_positions=batch.get("cls_positions"))
  return sums, grads, logits


# The gradients once (the costly compile), logits and losses on both default-suite backends; the
# other encodings (whose packed encoder outputs tests/model/test_positions.py checks) when slow.
@pytest.mark.parametrize("encoding, backend, with_grads", [
    ("learned", "xla", True), ("learned", "dot_product", False),
    pytest.param("relative", "xla", False, marks=pytest.mark.slow),
    pytest.param("rotary", "xla", False, marks=pytest.mark.slow)])
def test_packed_rows_give_each_example_what_it_gets_alone(encoding, backend, with_grads):
  examples = _examples(24)
  packed, ids = _packed(examples)
  alone = _alone(examples)
  assert len(ids) < len(examples) // 2  # several examples a row, or the test shows nothing
  cfg = ModelConfig(vocab_size=VOCAB, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                    max_position_embeddings=LENGTH, dropout_rate=0.0, attention_dropout_rate=0.0,
                    position_encoding=encoding, attention_backend=backend)
  model = BertForPreTraining(cfg)
  init = jax.jit(lambda rng, b: model.init(rng, **{k: b[k] for k in steps.MODEL_INPUTS},
                                            masked_lm_positions=b["masked_lm_positions"]))
  params = init(jax.random.key(1), {k: v[:1] for k, v in alone.items()})["params"]
  sums_p, grads_p, out_p = jax.device_get(_outputs(model, params, packed, with_grads))
  sums_a, grads_a, out_a = jax.device_get(_outputs(model, params, alone, with_grads))

  assert out_p["nsp_logits"].shape == (len(ids), SLOTS, 2)
  for r in range(len(ids)):
    slots = ids[r] >= 0
    np.testing.assert_allclose(out_p["nsp_logits"][r][slots], out_a["nsp_logits"][ids[r][slots]],
                               atol=2e-5, rtol=1e-5)
    weights = packed["masked_lm_weights"][r] > 0
    # A row's predictions are its examples' own, in slot order.
    mlm_alone = np.concatenate([out_a["mlm_logits"][e][alone["masked_lm_weights"][e] > 0]
                                for e in ids[r][slots]])
    np.testing.assert_allclose(out_p["mlm_logits"][r][weights], mlm_alone, atol=2e-5, rtol=1e-5)
  for key in ("mlm_count", "nsp_count", "mlm_correct", "nsp_correct"):
    assert sums_p[key] == sums_a[key], key
  for key in ("mlm_loss", "nsp_loss"):
    np.testing.assert_allclose(sums_p[key], sums_a[key], rtol=1e-5)
  assert sums_p["real_tokens"] == sums_a["real_tokens"]
  assert with_grads == (grads_p is not None)
  for gp, ga in zip(jax.tree.leaves(grads_p), jax.tree.leaves(grads_a)):
    np.testing.assert_allclose(gp, ga, atol=1e-6, rtol=1e-4)


def test_the_trainer_runs_with_packing_off(tmp_path):
  """Packed is the default every other trainer test runs; here the unpacked rows end to end."""
  import json

  from tiny_run import tiny_config

  from mebert.train import trainer

  config = tiny_config(**{"data.pack": False, "train.num_steps": 2, "train.log_every": 2,
                          "checkpoint.every_steps": 2})
  final = trainer.train_and_evaluate(config, str(tmp_path))
  assert np.isfinite(final["nsp_accuracy"]) and np.isfinite(final["mlm_loss"])
  records = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  train = [r for r in records if r["split"] == "train"][-1]
  assert np.isfinite(train["nsp_loss"]) and np.isfinite(train["mlm_loss"])
  assert json.loads((tmp_path / "config.json").read_text())["data"]["pack"] is False
