"""The grain stream: batch layout, exact resume, process sharding, epochs, the eval pass.

Unpacked rows here (data.pack=False); the resume tests run packed too. Packed rows' own layout,
invariants and process sharding: test_pretraining_packing.py."""

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest

from mebert.data import corpora, pipeline

B = 4
KEYS = {
    "input_ids": (np.int32, (B, 64)), "token_type_ids": (np.int32, (B, 64)), "segment_ids": (np.int32, (B, 64)),
    "positions": (np.int32, (B, 64)), "masked_lm_positions": (np.int32, (B, 10)),
    "masked_lm_ids": (np.int32, (B, 10)), "masked_lm_weights": (np.float32, (B, 10)),
    "next_sentence_labels": (np.int32, (B,)), "example_ids": (np.int64, (B,)),
}


def _take(it, n):
  return [next(it) for _ in range(n)]


def _same(xs, ys):
  return len(xs) == len(ys) and all(
      x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x) for x, y in zip(xs, ys))


@pytest.fixture(autouse=True)
def unpacked(data_config):
  data_config.pack = False
  return data_config


@pytest.fixture
def small_config(data_config, small_file):
  data_config.corpus = str(small_file)
  return data_config


resume_packed = pytest.mark.parametrize("pack", [False, True], ids=["unpacked", "packed"])


def test_batch_layout(data_config, spm_tok):
  it = pipeline.make_pretraining_iterator(data_config, spm_tok, split="train", batch_size=B, seed=0)
  batch = next(it)
  assert {k: (v.dtype, v.shape) for k, v in batch.items()} == {k: (np.dtype(d), s) for k, (d, s) in KEYS.items()}
  assert isinstance(it, grain.DatasetIterator)
  assert (batch["input_ids"][:, 0] == spm_tok.cls_id).all()


@resume_packed
def test_state_restore_resumes_exactly(data_config, spm_tok, pack):
  data_config.pack = pack
  it = pipeline.make_pretraining_iterator(data_config, spm_tok, split="train", batch_size=B, seed=0)
  _take(it, 3)
  state = it.get_state()
  expected = _take(it, 4)
  fresh = pipeline.make_pretraining_iterator(data_config, spm_tok, split="train", batch_size=B, seed=0)
  fresh.set_state(state)
  assert _same(_take(fresh, 4), expected)


@resume_packed
def test_orbax_checkpoint_of_the_iterator(data_config, spm_tok, tmp_path, pack):
  data_config.pack = pack
  it = pipeline.make_pretraining_iterator(data_config, spm_tok, split="train", batch_size=B, seed=0)
  _take(it, 2)
  options = ocp.CheckpointManagerOptions(enable_async_checkpointing=False)
  with ocp.CheckpointManager(tmp_path / "ckpt", options=options) as mngr:
    mngr.save(2, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
  expected = _take(it, 3)
  fresh = pipeline.make_pretraining_iterator(data_config, spm_tok, split="train", batch_size=B, seed=0)
  with ocp.CheckpointManager(tmp_path / "ckpt", options=options) as mngr:
    mngr.restore(2, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh)))
  assert _same(_take(fresh, 3), expected)


def test_process_shards_are_disjoint_and_cover_the_single_process_stream(data_config, spm_tok):
  single = pipeline.make_pretraining_iterator(data_config, spm_tok, split="train", batch_size=2 * B, seed=5)
  shards = [pipeline.make_pretraining_iterator(data_config, spm_tok, split="train", batch_size=B, seed=5,
                                               process_index=i, process_count=2) for i in range(2)]
  for _ in range(5):
    whole = next(single)
    parts = [next(s) for s in shards]
    ids = [set(p["example_ids"].tolist()) for p in parts]
    assert not ids[0] & ids[1]
    assert ids[0] | ids[1] == set(whole["example_ids"].tolist())
    # and the examples themselves are identical, wherever they were made
    by_id = {int(e): (p, j) for p in parts for j, e in enumerate(p["example_ids"])}
    for j, e in enumerate(whole["example_ids"]):
      p, k = by_id[int(e)]
      assert np.array_equal(p["input_ids"][k], whole["input_ids"][j])


def test_epochs_cover_every_example_once_and_reshuffle(small_config, spm_tok):
  n = len(pipeline.make_example_maker(small_config, spm_tok, split="train", seed=0))
  it = pipeline.make_pretraining_iterator(small_config, spm_tok, split="train", batch_size=B, seed=0)
  ids = np.concatenate([b["example_ids"] for b in _take(it, (2 * n) // B + 1)])
  first, second = ids[:n], ids[n:2 * n]
  assert sorted(first.tolist()) == list(range(n))
  assert sorted(second.tolist()) == list(range(n, 2 * n))  # epoch 1: ids n..2n-1
  assert not np.array_equal(first, second - n)  # a different order


def test_eval_is_one_pass_over_held_out_documents(small_config, spm_tok):
  _, train_docs = corpora.corpus_split(small_config, "train")
  corpus, eval_docs = corpora.corpus_split(small_config, "eval")
  assert len(eval_docs) and not set(train_docs.tolist()) & set(eval_docs.tolist())
  n = len(pipeline.make_example_maker(small_config, spm_tok, split="eval", seed=0))
  runs = []
  for _ in range(2):
    shards = [pipeline.make_pretraining_iterator(small_config, spm_tok, split="eval", batch_size=2, seed=0,
                                                 process_index=i, process_count=2) for i in range(2)]
    batches = [list(s) for s in shards]
    assert len(batches[0]) == len(batches[1]) == n // 4  # equal batch counts on every process
    runs.append([b for pair in zip(*batches) for b in pair])
  assert all(np.array_equal(x["input_ids"], y["input_ids"]) for x, y in zip(*runs))  # deterministic
  ids = np.concatenate([b["example_ids"] for b in runs[0]])
  assert sorted(ids.tolist()) == list(range(len(ids)))  # in order, epoch 0, nothing repeated


def test_eval_smaller_than_a_batch_is_a_clear_error(small_config, spm_tok):
  with pytest.raises(ValueError, match="fewer than one global batch"):
    pipeline.make_pretraining_iterator(small_config, spm_tok, split="eval", batch_size=100_000, seed=0)


@resume_packed
def test_worker_processes_give_the_same_stream_and_resume(small_config, spm_tok, pack):
  small_config.pack = pack
  inproc = pipeline.make_pretraining_iterator(small_config, spm_tok, split="train", batch_size=B, seed=0)
  expected = _take(inproc, 4)
  small_config.num_workers = 1
  it = pipeline.make_pretraining_iterator(small_config, spm_tok, split="train", batch_size=B, seed=0)
  try:
    assert _same(_take(it, 2), expected[:2])
    state = it.get_state()
    assert _same(_take(it, 2), expected[2:])
    it.set_state(state)  # rewinds the workers
    assert _same(_take(it, 2), expected[2:])
  finally:
    it.close()
