"""Grain wiring: the example maker -> a sharded, shuffled, repeated, batched, checkpointable stream.

The global stream is a MapDataset over example indices: shuffled (grain's index shuffle, reseeded
each epoch by repeat()), repeated, then tagged with its epoch (global position // examples per epoch).

Unpacked (data.pack=False, and always for eval), one example is one row. Each JAX process takes
every process_count-th element of that one global stream ([i::n] slicing, same seed everywhere), so
process shards are disjoint, and their batches at one step together hold exactly the examples a
single process with the global batch size would see at that step. Examples are made after the
slicing, so each host only builds its own. The iterator's state is just the next position, so
Orbax's grain.checkpoint.CheckpointSave(it) / CheckpointRestore(it) resume it exactly.

Packed (data.pack, training only), the unit of the global stream is the packed row instead: the
examples are dealt to data.pack_streams streams, each packed on its own, and process i of n takes
every n-th global row (packing.py's docstring has the details). The same holds with rows for
examples: shards are disjoint, a step's batches on n processes together are the rows one process
would see, each host makes only its own examples, and the state (rows read and each stream's packer
state) resumes exactly, also on another process count that divides data.pack_streams.

Eval is one ordered pass, cut to whole global batches so that every process runs the same number
of eval steps; it is not packed, since per-process packing would give processes different numbers
of rows, and its metrics (per prediction, per NSP label) are the same either way.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import logging

import grain
import numpy as np

from mebert.data import corpora, docstore, instances, packing, spans


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
      next_sentence=str(data_config.get("next_sentence", "nsp")),
      mask_token_prob=float(data_config.get("mask_token_prob", 0.8)),
      random_token_prob=float(data_config.get("random_token_prob", 0.1)),
      cross_document=bool(data_config.get("cross_document", False)))


def make_example_maker(data_config, tokenizer, *, split: str, seed: int) -> instances.ExampleMaker:
  """The pure (epoch, index) -> example function of a split; len() is the examples per epoch."""
  options = example_options(data_config)
  corpus, doc_ids = corpora.corpus_split(data_config, split)
  if not len(doc_ids):
    raise ValueError(f"corpus {corpus.spec!r}: the {split} split has no documents "
                     "(corpus too small for a held-out split? set eval_corpus)")
  store, span_index = _cached_store(corpus, doc_ids, tokenizer, options.max_num_tokens,
                                    options.cross_document)
  maker = instances.ExampleMaker(store, tokenizer, options, seed, span_index=span_index)
  logging.info("%s split of %r: %d documents, %d examples per epoch", split, corpus.spec, store.num_docs, len(maker))
  return maker


_STORES: collections.OrderedDict = collections.OrderedDict()


def _cached_store(corpus, doc_ids: np.ndarray, tokenizer, max_num_tokens: int, cross_document: bool):
  """(doc store, its FULL-SENTENCES span index or None), built once per split."""
  # Keyed on the corpus and tokenizer objects (identity) and the split's documents, so a trainer
  # that builds its eval iterator again at every evaluation tokenizes each split once.
  key = (id(corpus), id(tokenizer), max_num_tokens, hashlib.blake2b(doc_ids.tobytes(), digest_size=16).digest())
  if key in _STORES and tuple(_STORES[key][:2]) == (corpus, tokenizer):
    _STORES.move_to_end(key)
  else:
    store = docstore.build_store(corpus.documents, doc_ids, tokenizer, max_num_tokens, corpus.in_memory)
    # Holding the objects keeps their ids from being reused.
    _STORES[key] = [corpus, tokenizer, store, None]
    while len(_STORES) > 4:
      _STORES.popitem(last=False)
  entry = _STORES[key]
  if cross_document and entry[3] is None:
    entry[3] = spans.build_spans(entry[2], tokenizer.sep_id, max_num_tokens)
  return entry[2], (entry[3] if cross_document else None)


def packs(data_config, split: str) -> bool:
  """Whether `split`'s rows are packed (training only; see the module docstring)."""
  return split == "train" and bool(data_config.get("pack", False))


def batch_layout(data_config, split: str, rows: int) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
  """{key: (shape, dtype)} of a batch of `rows` rows of `split`, as the iterator yields it."""
  length = int(data_config.seq_len)
  if packs(data_config, split):
    layout = packing.pack_layout(data_config)
    preds, slots = layout.max_predictions, (rows, layout.max_examples)
  else:
    preds, slots = int(data_config.max_predictions_per_seq), (rows,)
  out = {k: ((rows, length), np.dtype(np.int32)) for k in ("input_ids", "token_type_ids",
                                                          "segment_ids", "positions")}
  out.update(masked_lm_positions=((rows, preds), np.dtype(np.int32)),
             masked_lm_ids=((rows, preds), np.dtype(np.int32)),
             masked_lm_weights=((rows, preds), np.dtype(np.float32)),
             next_sentence_labels=(slots, np.dtype(np.int32)), example_ids=(slots, np.dtype(np.int64)))
  if len(slots) == 2:
    out["cls_positions"] = (slots, np.dtype(np.int32))
  return out


def _read_options(data_config, streams: int = 1) -> grain.ReadOptions:
  # Packed streams share the configured read threads (at least one each).
  threads = max(1, int(data_config.get("read_threads", 2)) // streams)
  return grain.ReadOptions(num_threads=threads,
                           prefetch_buffer_size=int(data_config.get("prefetch_buffer_size", 64)))


def _global_examples(n: int, seed: int) -> grain.MapDataset:
  return grain.MapDataset.range(n).shuffle(seed=seed).repeat(None).map_with_index(_TagEpoch(n))


def make_pretraining_dataset(data_config, tokenizer, *, split: str, seed: int, process_index: int = 0,
                             process_count: int = 1, global_batch_size: int | None = None) -> grain.IterDataset:
  """The per-process, unbatched row stream (packed for training when data.pack is on).

  train: shuffled, reshuffled each epoch, repeated forever. eval: one pass in order, cut to a
  multiple of global_batch_size (if given) so that every process gets the same number of batches.
  """
  maker = make_example_maker(data_config, tokenizer, split=split, seed=seed)
  n = len(maker)
  if packs(data_config, split):
    return _packed_train_dataset(data_config, maker, tokenizer, seed, process_index, process_count)
  ds = grain.MapDataset.range(n)
  if split == "train":
    ds = ds.shuffle(seed=seed).repeat(None)
  elif global_batch_size:
    if n < global_batch_size:
      raise ValueError(f"eval split has {n} examples, fewer than one global batch of {global_batch_size}")
    ds = ds[: n - n % global_batch_size]
  ds = ds.map_with_index(_TagEpoch(n))[process_index::process_count].map(_Make(maker))
  return ds.to_iter_dataset(_read_options(data_config))


def _packed_train_dataset(data_config, maker, tokenizer, seed: int, process_index: int,
                          process_count: int) -> grain.IterDataset:
  layout = packing.pack_layout(data_config)
  num_streams, bins = int(data_config.get("pack_streams", 8)), int(data_config.get("pack_bins", 64))
  if num_streams < 1 or num_streams % process_count:
    raise ValueError(f"data.pack_streams={num_streams} is not a multiple of the {process_count} "
                     "processes; set it to one (it decides the packed stream: keep it for the run)")
  if bins < 1:
    raise ValueError(f"data.pack_bins must be >= 1, not {bins}")
  ids = list(range(process_index, num_streams, process_count))
  streams = []
  for v in ids:
    # Each stream builds its own chain: grain's worker slicing mutates datasets in place.
    examples = (_global_examples(len(maker), seed)[v::num_streams]
                .map(packing.CompactExample(maker)).to_iter_dataset(_read_options(data_config, len(ids))))
    streams.append(packing.packed_stream(examples, layout, pad_id=tokenizer.pad_id,
                                         seed=seed * num_streams + v, num_bins=bins))
  return packing.RoundRobinDataset(streams, ids, num_streams)


def make_pretraining_iterator(data_config, tokenizer, *, split: str, batch_size: int, seed: int,
                              process_index: int = 0, process_count: int = 1) -> grain.DatasetIterator:
  """Batches of `batch_size` (per process) dicts of numpy arrays.

  Keys: input_ids, token_type_ids, segment_ids, positions [B, L] int32; masked_lm_positions,
  masked_lm_ids [B, P] int32, masked_lm_weights [B, P] float32; next_sentence_labels [B] int32
  (0 = IsNext / in order, 1 = random / swapped); example_ids [B] int64 (epoch * examples_per_epoch
  + index). Packed (see packing.py): P is the per-row prediction budget, next_sentence_labels and
  example_ids are [B, S] with -1 in empty slots, and cls_positions [B, S] int32 is added
  (`batch_layout` gives the shapes). The iterator supports get_state()/set_state() (Orbax:
  grain.checkpoint.CheckpointSave).
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
