"""Grain wiring: the example maker -> a sharded, shuffled, repeated, batched, checkpointable stream.

The global stream is a MapDataset over example indices: shuffled (grain's index shuffle, reseeded
each epoch by repeat()), repeated, then tagged with its epoch (global position // examples per epoch).
Each JAX process takes every process_count-th element of that one global stream ([i::n] slicing,
same seed everywhere), so process shards are disjoint, and their batches at one step together hold
exactly the examples a single process with the global batch size would see at that step. Examples
are made after the slicing, so each host only builds its own. The iterator's state is just the next
position, so Orbax's grain.checkpoint.CheckpointSave(it) / CheckpointRestore(it) resume it exactly.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import logging

import grain
import numpy as np

from mebert.data import corpora, docstore, instances
from mebert.data.config import default_data_config  # pylint: disable=unused-import  (re-exported)


@dataclasses.dataclass(frozen=True)
class _TagEpoch:
  """(global position, example index) -> (epoch, example index)."""

  examples_per_epoch: int

  def __call__(self, position: int, index) -> tuple[int, int]:
    return position // self.examples_per_epoch, int(index)


@dataclasses.dataclass(frozen=True)
class _Make:
  maker: instances.ExampleMaker

  def __call__(self, epoch_index: tuple[int, int]) -> dict[str, np.ndarray]:
    return self.maker(*epoch_index)


def example_options(data_config) -> instances.ExampleOptions:
  return instances.ExampleOptions(
      seq_len=int(data_config.seq_len), max_predictions_per_seq=int(data_config.max_predictions_per_seq),
      masked_lm_prob=float(data_config.get("masked_lm_prob", 0.15)),
      short_seq_prob=float(data_config.get("short_seq_prob", 0.1)),
      whole_word_masking=bool(data_config.get("whole_word_masking", False)),
      next_sentence=str(data_config.get("next_sentence", "nsp")))


def make_example_maker(data_config, tokenizer, *, split: str, seed: int) -> instances.ExampleMaker:
  """The pure (epoch, index) -> example function of a split; len() is the examples per epoch."""
  options = example_options(data_config)
  corpus, doc_ids = corpora.corpus_split(data_config, split)
  if not len(doc_ids):
    raise ValueError(f"corpus {corpus.spec!r}: the {split} split has no documents "
                     "(corpus too small for a held-out split? set eval_corpus)")
  store = _cached_store(corpus, doc_ids, tokenizer, options.max_num_tokens)
  maker = instances.ExampleMaker(store, tokenizer, options, seed)
  logging.info("%s split of %r: %d documents, %d examples per epoch", split, corpus.spec, store.num_docs, len(maker))
  return maker


_STORES: collections.OrderedDict = collections.OrderedDict()


def _cached_store(corpus, doc_ids: np.ndarray, tokenizer, max_num_tokens: int):
  # Keyed on the corpus and tokenizer objects (identity) and the split's documents, so a trainer
  # that builds its eval iterator again at every evaluation tokenizes each split once.
  key = (id(corpus), id(tokenizer), max_num_tokens, hashlib.blake2b(doc_ids.tobytes(), digest_size=16).digest())
  if key in _STORES and _STORES[key][:2] == (corpus, tokenizer):
    _STORES.move_to_end(key)
    return _STORES[key][2]
  store = docstore.build_store(corpus.documents, doc_ids, tokenizer, max_num_tokens, corpus.in_memory)
  _STORES[key] = (corpus, tokenizer, store)  # holding the objects keeps their ids from being reused
  while len(_STORES) > 4:
    _STORES.popitem(last=False)
  return store


def make_pretraining_dataset(data_config, tokenizer, *, split: str, seed: int, process_index: int = 0,
                             process_count: int = 1, global_batch_size: int | None = None) -> grain.IterDataset:
  """The per-process, unbatched example stream (packing, if any, goes between this and batching).

  train: shuffled, reshuffled each epoch, repeated forever. eval: one pass in order, cut to a
  multiple of global_batch_size (if given) so that every process gets the same number of batches.
  """
  maker = make_example_maker(data_config, tokenizer, split=split, seed=seed)
  n = len(maker)
  ds = grain.MapDataset.range(n)
  if split == "train":
    ds = ds.shuffle(seed=seed).repeat(None)
  elif global_batch_size:
    if n < global_batch_size:
      raise ValueError(f"eval split has {n} examples, fewer than one global batch of {global_batch_size}")
    ds = ds[: n - n % global_batch_size]
  ds = ds.map_with_index(_TagEpoch(n))[process_index::process_count].map(_Make(maker))
  return ds.to_iter_dataset(grain.ReadOptions(num_threads=int(data_config.get("read_threads", 2)),
                                              prefetch_buffer_size=int(data_config.get("prefetch_buffer_size", 64))))


def make_pretraining_iterator(data_config, tokenizer, *, split: str, batch_size: int, seed: int,
                              process_index: int = 0, process_count: int = 1) -> grain.DatasetIterator:
  """Batches of `batch_size` (per process) dicts of numpy arrays.

  Keys: input_ids, token_type_ids, segment_ids, positions [B, L] int32; masked_lm_positions,
  masked_lm_ids [B, P] int32, masked_lm_weights [B, P] float32; next_sentence_labels [B] int32
  (0 = IsNext / in order, 1 = random / swapped); example_ids [B] int64 (epoch * examples_per_epoch
  + index). The iterator supports get_state()/set_state() (Orbax: grain.checkpoint.CheckpointSave).
  """
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, {process_count})")
  ds = make_pretraining_dataset(data_config, tokenizer, split=split, seed=seed, process_index=process_index,
                                process_count=process_count, global_batch_size=batch_size * process_count)
  ds = ds.batch(batch_size, drop_remainder=True)
  workers = int(data_config.get("num_workers", 0))
  if workers > 0:
    _mark_flags_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
  return iter(ds)


def _mark_flags_parsed() -> None:
  # grain's multiprocessing reads absl flags; outside app.run (pytest, notebooks) they are unparsed
  # and reading them raises. Marking them parsed there keeps every flag at its default; under
  # app.run they are already parsed and this does nothing.
  from absl import flags  # pylint: disable=g-import-not-at-top

  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
