"""Packed fine-tuning batches: every example sees exactly what it would alone, so packed logits,
losses and gradients equal the padded ones, for sequence and token tasks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mebert.model.config import ModelConfig
from mebert.tasks import batching, steps
from mebert.tasks.model import BertForTask

CONFIG = ModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                     max_position_embeddings=32, dropout_rate=0.0, attention_dropout_rate=0.0)


def _encoded(kind: str, n: int = 11, seed: int = 0) -> batching.Encoded:
  rng = np.random.default_rng(seed)
  lengths = rng.integers(2, 15, n).astype(np.int32)
  ids = [np.r_[2, rng.integers(5, 64, k - 2), 3].astype(np.int32) for k in lengths]
  types = [np.r_[np.zeros(k // 2), np.ones(k - k // 2)].astype(np.int32) for k in lengths]
  enc = batching.Encoded(ids, types, lengths)
  if kind == "token_classification":
    enc.labels = [np.where(rng.random(k) < 0.7, rng.integers(0, 3, k), -1).astype(np.int32)
                  for k in lengths]
  elif kind == "regression":
    enc.labels = rng.normal(size=n).astype(np.float32)
  else:
    enc.labels = rng.integers(0, 3, n).astype(np.int32)
  return enc


def test_pack_groups_first_fit_decreasing_within_limits():
  lengths = np.array([9, 2, 7, 3, 3, 5, 16, 1, 4])
  groups = batching.pack_groups(lengths, 16, max_segments=3)
  assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
  assert all(sum(lengths[g]) <= 16 and len(g) <= 3 for g in groups)
  assert groups[0] == [6]  # the longest first, alone in a full row
  assert len(groups) == 4  # 50 tokens in rows of 16: four rows is the minimum
  with pytest.raises(ValueError, match="pack_length=8"):
    batching.pack_groups(lengths, 8, 3)


def test_packed_train_batches_take_the_same_examples_per_step_as_padding():
  lengths = np.random.default_rng(1).integers(2, 30, 103)
  packed = batching.packed_train_batches(lengths, 16, 32, 16, row_multiple=2, seed=3, epoch=1)
  assert len(packed) == 7
  seen = np.concatenate([rows[rows >= 0] for rows, _ in packed])
  assert sorted(seen) == list(range(103))
  for rows, num_rows in packed:
    assert num_rows % 2 == 0
    assert num_rows >= len(batching.pack_groups(lengths[rows[rows >= 0]], 32, 16))
  again = batching.packed_train_batches(lengths, 16, 32, 16, 2, seed=3, epoch=1)
  assert all((a[0] == b[0]).all() and a[1] == b[1] for a, b in zip(packed, again))


def test_the_first_epochs_packing_serves_for_its_own_segment_limit():
  """FineTuning packs epoch 0 once: to find the most segments per row, and then, with that as the
  limit, for its batches. The limit never binds there, so the rows are the same."""
  lengths = np.random.default_rng(2).integers(2, 12, 200)
  loose = batching.epoch_row_groups(lengths, 32, 48, 24, seed=0, epoch=0)
  most = batching.most_segments_per_row(loose)
  assert 2 < most < 24
  tight = batching.epoch_row_groups(lengths, 32, 48, most, seed=0, epoch=0)
  assert all((a[0] == b[0]).all() and a[1] == b[1] for a, b in zip(loose, tight))
  cached = batching.packed_train_batches(lengths, 32, 48, most, 1, 0, 0, groups=loose)
  fresh = batching.packed_train_batches(lengths, 32, 48, most, 1, 0, 0)
  assert all((a[0] == b[0]).all() and a[1] == b[1] for a, b in zip(cached, fresh))


def test_rare_row_counts_run_padded_up_rather_than_compile_their_own_step():
  sst2 = {4: 4, 5: 185, 6: 902, 7: 749, 8: 152, 9: 6, 10: 1}  # steps per row count, rows of 72
  merged = batching.merge_row_counts(sst2, 250)
  assert merged == {4: 6, 5: 6, 6: 6, 7: 7, 8: 8, 9: 10, 10: 10}

  def cost(mapping, compile_cost):
    return (sum(n * mapping[r] for r, n in sst2.items())
            + compile_cost * len(set(mapping.values())))

  # Against every other choice of counts to compile (each count padded up to the next chosen one;
  # the largest always compiled), none costs less.
  import itertools
  sizes = sorted(sst2)
  for k in range(len(sizes)):
    for chosen in itertools.combinations(sizes[:-1], k):
      keep = sorted(chosen) + [sizes[-1]]
      other = {r: next(c for c in keep if c >= r) for r in sizes}
      assert cost(merged, 250) <= cost(other, 250)
  assert batching.merge_row_counts(sst2, 0) == {r: r for r in sst2}  # 0: every count its own
  assert set(batching.merge_row_counts(sst2, 1e9).values()) == {10}  # compiles dear: one step
  assert batching.merge_row_counts({}, 250) == {}


@pytest.mark.parametrize("kind", ["classification", "regression", "token_classification"])
def test_packed_batch_gives_the_padded_logits_loss_and_gradients(kind):
  enc = _encoded(kind)
  rows = np.r_[np.arange(len(enc)), -1, -1]  # two empty slots: weight 0
  outputs = 1 if kind == "regression" else 3
  model = BertForTask(CONFIG, kind, outputs)
  padded = batching.make_batch(enc, rows, 16, kind)
  rows_needed = len(batching.pack_groups(enc.lengths, 32, 8))
  packed = batching.make_packed_batch(enc, rows, rows_needed + 1, 32, 8, kind)  # + an empty row
  assert packed["input_ids"].shape == (rows_needed + 1, 32)
  assert (packed["segment_ids"] != 0).sum() == enc.lengths.sum()
  assert packed["weights"].sum() == len(enc)
  ids = jnp.zeros((1, 8), jnp.int32)
  params = model.init(jax.random.key(0), ids, ids, jnp.ones_like(ids))["params"]

  logits_padded = model.apply({"params": params}, **steps.model_inputs(padded))
  logits_packed = model.apply({"params": params}, **steps.model_inputs(packed))
  for r in range(packed["input_ids"].shape[0]):
    for s in np.flatnonzero(packed["weights"][r]):
      start = packed["cls_positions"][r, s]
      n = int((packed["segment_ids"][r] == s + 1).sum())
      example = int(np.flatnonzero(
          [(enc.input_ids[i].shape[0] == n and (enc.input_ids[i] == packed["input_ids"][r, start:start + n]).all())
           for i in range(len(enc))])[0])
      if kind == "token_classification":
        np.testing.assert_allclose(logits_packed[r, start:start + n], logits_padded[example, :n],
                                   atol=2e-5)
      else:
        np.testing.assert_allclose(logits_packed[r, s], logits_padded[example], atol=2e-5)

  def loss_and_grads(batch):
    total = jnp.sum(steps._weights(batch, kind))
    grad_fn = jax.grad(steps.task_sums, has_aux=True)
    grads, sums = grad_fn(params, batch, model, jax.random.key(0), kind, total)
    return sums, grads

  sums_padded, grads_padded = loss_and_grads(padded)
  sums_packed, grads_packed = loss_and_grads(packed)
  for key in ("loss_sum", "correct", "count", "examples", "real_tokens"):
    np.testing.assert_allclose(sums_packed[key], sums_padded[key], rtol=2e-5, atol=2e-5)
  assert float(sums_packed["tokens"]) < float(sums_padded["tokens"])  # the point of packing
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=3e-5), grads_packed, grads_padded)


def test_finetuning_packs_by_default_and_compiles_once_per_row_count(tiny_config, vocab_file,
                                                                     sentences, tmp_path):
  from mebert.tasks import finetune

  texts = sentences(120, seed=4)
  path = tmp_path / "train.tsv"
  path.write_text("sentence\tlabel\n" + "".join(f"{t}\t{int('good' in t)}\n" for t in texts))
  config = tiny_config("classification", vocab_file, **{
      "data.train_files": str(path), "data.holdout_fraction": 0.2, "train.num_steps": 12,
      "train.log_every": 4, "eval.every_steps": 12, "data.pack_length": 32,
      "train.learning_rate": 1.25e-3})  # an optimizer of its own: a fresh jitted step to count
  run = finetune.FineTuning(config, str(tmp_path / "w"))
  # [CLS] slots per row: as many as the first epoch's fullest row holds, under pack_length // 2.
  fullest = max(len(g) for rows, _ in run._epoch_batches(0)
                for g in batching.pack_groups(run.enc_train.lengths[rows[rows >= 0]], 32, 16))
  assert run.pack and run.max_segments == fullest < 16
  plan = [run._epoch_batches(step // run.per_epoch)[step % run.per_epoch] for step in range(12)]
  row_counts = {num_rows for _, num_rows in plan}
  assert all(num_rows % run.rt.dp == 0 for num_rows in row_counts)  # rows split over the devices
  real_tokens = sum(int(run.enc_train.lengths[rows[rows >= 0]].sum()) for rows, _ in plan)
  slots = sum(num_rows * 32 for _, num_rows in plan)
  result = run.train()
  assert result["last_step"] == 12
  assert result["train_step_compiles"] == len(row_counts)
  real = result["train_real_tokens_per_s"] / result["train_tokens_per_s"]
  assert real == pytest.approx(real_tokens / slots)  # the step saw exactly the packed rows


def test_merged_row_counts_train_exactly_as_unmerged(tiny_config, vocab_file, sentences,
                                                     tmp_path):
  """Padding a step up to more rows adds empty rows (weight 0, no attention to them) at the end,
  and dropout bits are drawn per element index, so the real rows train exactly as before."""
  from mebert.tasks import finetune

  texts = sentences(400, seed=6)
  path = tmp_path / "train.tsv"
  path.write_text("sentence\tlabel\n" + "".join(f"{t}\t{int('good' in t)}\n" for t in texts))
  results, counts = {}, {}
  for cost in (1e9, 0.0):  # one step at the largest row count / every count its own step
    config = tiny_config("classification", vocab_file, **{
        "data.train_files": str(path), "data.holdout_fraction": 0.2, "train.num_steps": 8,
        "eval.every_steps": 8, "data.pack_length": 16, "data.compile_cost_tokens": cost,
        "train.batch_size": 32, "train.learning_rate": 1.5e-3})  # own optimizer: fresh steps
    run = finetune.FineTuning(config, str(tmp_path / f"w{cost:g}"))
    counts[cost] = {run._epoch_batches(step // run.per_epoch)[step % run.per_epoch][1]
                    for step in range(8)}
    results[cost] = run.train()
  assert counts[1e9] == {max(counts[0.0])} and len(counts[0.0]) > 1
  # The jitted step is shared (same model and optimizer), and each run counts only the shapes it
  # compiled: the second run compiles the counts the first did not.
  assert results[1e9]["train_step_compiles"] == 1
  assert results[0.0]["train_step_compiles"] == len(counts[0.0]) - 1
  assert results[1e9]["train_tokens_per_s"] > 0
  for key in ("loss", "accuracy"):
    assert results[1e9][key] == pytest.approx(results[0.0][key], rel=1e-5, abs=1e-6)


def test_pack_length_defaults_to_the_longest_example_and_rejects_shorter(tiny_config, vocab_file,
                                                                          sentences, tmp_path):
  from mebert.tasks import finetune

  path = tmp_path / "train.tsv"
  path.write_text("sentence\tlabel\n" + "".join(f"{t}\t{int('good' in t)}\n"
                                                for t in sentences(40, seed=5)))
  config = tiny_config("classification", vocab_file, **{"data.train_files": str(path),
                                                         "data.holdout_fraction": 0.2})
  run = finetune.FineTuning(config, str(tmp_path / "w"))
  longest = int(run.enc_train.lengths.max())
  assert run.pack_length % 8 == 0 and longest <= run.pack_length < longest + 8
  assert run.pack_length < int(config.data.seq_len)  # short sentences: shorter rows than seq_len
  with config.unlocked():
    config.data.pack_length = longest - 1
  with pytest.raises(ValueError, match=f"data.pack_length={longest - 1} is shorter than the longest "
                                       f"training example \\({longest} tokens"):
    finetune.FineTuning(config, str(tmp_path / "w2"))


@pytest.mark.parametrize("packed", [True, False])
@pytest.mark.parametrize("pre_layer_norm", [False, True])
def test_sequence_heads_run_the_last_layer_at_cls_only_with_the_same_results(packed,
                                                                             pre_layer_norm):
  """BertModel(pooled_only=True), as sequence heads call it, computes the last layer's output at
  the [CLS] rows alone: pooled vectors, logits and every gradient equal the full encoder's."""
  import dataclasses

  from mebert.model.encoder import BertModel

  config = dataclasses.replace(CONFIG, pre_layer_norm=pre_layer_norm)
  enc = _encoded("classification", n=9, seed=2)
  rows = np.r_[np.arange(len(enc)), -1]
  if packed:
    batch = batching.make_packed_batch(enc, rows, 5, 32, 8, "classification")
  else:
    batch = batching.make_batch(enc, rows, 16, "classification")
  inputs = steps.model_inputs(batch)
  model = BertModel(config)
  params = model.init(jax.random.key(1), **inputs)["params"]

  def pooled(params, pooled_only):
    out = model.apply({"params": params}, **inputs, pooled_only=pooled_only)
    assert (out.sequence_output is None) == pooled_only
    return out.pooled_output

  full, cls_only = pooled(params, False), pooled(params, True)
  assert full.shape == cls_only.shape
  np.testing.assert_allclose(cls_only, full, atol=2e-6)
  weights = jnp.asarray(batch["weights"])[..., None]  # empty slots read position 0: not compared
  loss = lambda p, only: jnp.sum(jnp.sin(3.0 * pooled(p, only)) * weights)
  grads_full, grads_cls = jax.grad(loss)(params, False), jax.grad(loss)(params, True)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(b, a, rtol=1e-5, atol=2e-6), grads_full,
               grads_cls)
  # The last layer's query path really is narrower: its FLOPs drop (jax's cost analysis).
  flops = lambda only: jax.jit(lambda p: pooled(p, only)).lower(params).cost_analysis()["flops"]
  assert flops(True) < 0.9 * flops(False)
