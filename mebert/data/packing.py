"""Packed pretraining rows: several examples per row, as NVIDIA's and Graphcore's packed BERT.

Without packing every example gets a row of its own, so the short examples (short_seq_prob) and
document ends leave the rest of their row as padding. Packed, a row holds up to `max_examples`
whole examples (none is ever split), each with its own [CLS], NSP/SOP label, positions restarting
at 0 and masked positions, and its own segment id (1, 2, ... in the row; 0 = padding), so that
attention, which the model masks by segment equality, stays inside each example. token_type_ids
stay the A/B sentence ids within each example. Shapes are static:

  input_ids, token_type_ids, segment_ids, positions   [L]   int32
  masked_lm_positions, masked_lm_ids                  [P']  int32 (positions into the row)
  masked_lm_weights                                   [P']  float32 (0 = empty slot)
  cls_positions                                       [S]   int32 (row position of each [CLS])
  next_sentence_labels                                [S]   int32 (-1 = empty slot)
  example_ids                                         [S]   int64 (-1 = empty slot)

S = data.pack_max_examples (or, 0, `automatic_max_examples`); P' = data.pack_max_predictions, or (0) enough that the predictions
never decide what fits (`max_predictions`). The packer is grain's FirstFitPackIterDataset: it fills
`num_packing_bins` rows first-fit from the stream, emits them all (in a seeded shuffled order) when
an example fits none, and starts again with that example; an example goes only where its tokens,
its predictions and a free slot all fit.

Process-count independence. The global example stream is dealt to `data.pack_streams` (V) streams,
example i to stream i mod V; each stream is packed on its own, and global row j is row j // V of
stream j mod V. Process p of n (n must divide V) owns the streams p, p+n, ... and reads them in
turn, so its k-th row is global row p + k*n: exactly the share of the global row stream that
unpacked pipelines give each process, the union over processes is the single-process stream,
and every process makes only the examples of its own rows. The iterator state is the rows read
plus each stream's packer state; states saved by n processes merge into one that any n' dividing
V resumes from (`merged_state`), so a checkpoint moves between process counts as before.
"""

from __future__ import annotations

import dataclasses
import math

import grain
import numpy as np

# The features the packer concatenates; the rest of a row is derived from them (_FinishRow).
_TOKEN_KEYS = ("input_ids", "token_type_ids")
_PREDICTION_KEYS = ("masked_lm_positions", "masked_lm_ids")
_SLOT_KEYS = ("next_sentence_labels", "example_ids")


@dataclasses.dataclass(frozen=True)
class PackLayout:
  seq_len: int
  max_examples: int  # S: [CLS] slots and NSP labels per row
  max_predictions: int  # P': masked-LM slots per row

  @property
  def length_struct(self) -> dict[str, int]:
    return {**{k: self.seq_len for k in _TOKEN_KEYS},
            **{k: self.max_predictions for k in _PREDICTION_KEYS},
            **{k: self.max_examples for k in _SLOT_KEYS}}


def pack_layout(data_config) -> PackLayout:
  """S and P' from the data config (checked, with the key named in the error)."""
  seq_len, per_example = int(data_config.seq_len), int(data_config.max_predictions_per_seq)
  slots = int(data_config.get("pack_max_examples", 0))
  if slots < 0:
    raise ValueError(f"data.pack_max_examples must be >= 1 (0 = automatic), not {slots}")
  if slots == 0:
    slots = automatic_max_examples(seq_len)
  predictions = int(data_config.get("pack_max_predictions", 0))
  if predictions < 0:
    raise ValueError(f"data.pack_max_predictions must be >= 0 (0 = automatic), not {predictions}")
  if predictions == 0:
    predictions = automatic_max_predictions(seq_len, per_example,
                                            float(data_config.get("masked_lm_prob", 0.15)), slots)
  elif predictions < per_example:
    raise ValueError(f"data.pack_max_predictions={predictions} is below "
                     f"data.max_predictions_per_seq={per_example}: a full example would not fit")
  return PackLayout(seq_len, slots, predictions)


def automatic_max_examples(seq_len: int) -> int:
  """[CLS] slots per row: 4 at 128 tokens, 8 at 512. On corpora of short documents (Gutenberg's
  paragraphs) 4 slots left 51% of 512-token rows as padding, 8 slots 11%; on WikiText's longer
  paragraphs 4 slots already leave under 7% (mebert.data.padding_report)."""
  return max(4, seq_len // 64)


def automatic_max_predictions(seq_len: int, per_example: int, masked_lm_prob: float,
                              max_examples: int) -> int:
  """Prediction slots per row such that the predictions never stop an example from fitting.

  An example with c maskable tokens gets min(P, max(1, round(prob * c))) <= prob * c + 1
  predictions, and the examples of a row hold fewer than seq_len maskable tokens together, so a
  row of k examples needs at most prob * seq_len + k slots (and never more than k * P)."""
  return max(per_example, min(max_examples * per_example,
                              math.ceil(masked_lm_prob * seq_len) + max_examples))


@dataclasses.dataclass(frozen=True)
class CompactExample:
  """(epoch, index) -> the unpadded example the packer lays into a row."""

  maker: object

  def __call__(self, epoch_index: tuple[int, int]) -> dict[str, np.ndarray]:
    return self.maker.compact(*epoch_index)


@dataclasses.dataclass(frozen=True)
class _FinishRow:
  """grain's packed features -> mebert's packed row (see the module docstring)."""

  layout: PackLayout

  def __call__(self, row: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    segment_ids = row["input_ids_segment_ids"]
    positions = row["input_ids_positions"]
    # Example k (segment k + 1) starts where its positions restart at 0.
    starts = np.flatnonzero((positions == 0) & (segment_ids > 0)).astype(np.int32)
    prediction_segment = row["masked_lm_positions_segment_ids"]
    has_prediction = prediction_segment > 0
    offsets = np.where(has_prediction, starts[np.maximum(prediction_segment, 1) - 1], 0)
    cls_positions = np.zeros(self.layout.max_examples, np.int32)
    cls_positions[:len(starts)] = starts
    return {
        "input_ids": row["input_ids"], "token_type_ids": row["token_type_ids"],
        "segment_ids": segment_ids, "positions": positions,
        "masked_lm_positions": (row["masked_lm_positions"] + offsets).astype(np.int32),
        "masked_lm_ids": row["masked_lm_ids"],
        "masked_lm_weights": has_prediction.astype(np.float32),
        "cls_positions": cls_positions,
        "next_sentence_labels": row["next_sentence_labels"],
        "example_ids": row["example_ids"],
    }


def packed_stream(examples: grain.IterDataset, layout: PackLayout, *, pad_id: int, seed: int,
                  num_bins: int) -> grain.IterDataset:
  """Compact examples -> packed rows (one stream; see the module docstring)."""
  padding = {"input_ids": pad_id, "token_type_ids": 0, "masked_lm_positions": 0,
             "masked_lm_ids": 0, "next_sentence_labels": -1, "example_ids": -1}
  packed = grain.experimental.FirstFitPackIterDataset(
      examples, length_struct=layout.length_struct, num_packing_bins=num_bins, seed=seed,
      shuffle_bins=True, padding_struct=padding, max_sequences_per_bin=layout.max_examples)
  return packed.map(_FinishRow(layout))


class RoundRobinDataset(grain.IterDataset):
  """Rows taken from each parent stream in turn; the state names each stream by its global id."""

  def __init__(self, parents: list[grain.IterDataset], stream_ids: list[int], num_streams: int):
    super().__init__(parents)
    self._stream_ids, self._num_streams = list(stream_ids), num_streams

  def __iter__(self):
    return _RoundRobinIterator([iter(p) for p in self.parents], self._stream_ids, self._num_streams)


class _RoundRobinIterator(grain.DatasetIterator):

  def __init__(self, parents, stream_ids: list[int], num_streams: int):
    super().__init__(parents)
    self._stream_ids, self._num_streams = stream_ids, num_streams
    self._rows = 0

  def __next__(self):
    row = next(self._parents[self._rows % len(self._parents)])
    self._rows += 1
    return row

  def get_state(self) -> dict:
    return {"rows": self._rows, "num_streams": self._num_streams,
            "streams": {str(v): p.get_state() for v, p in zip(self._stream_ids, self._parents)}}

  def set_state(self, state: dict) -> None:
    if not isinstance(state, dict) or not {"rows", "num_streams", "streams"} <= set(state):
      raise ValueError(f"data iterator state {str(state)[:200]} is not a packed stream's state "
                       "(a checkpoint saved with data.pack=False? resume with the run's data.pack)")
    streams = state["streams"]
    if int(state["num_streams"]) != self._num_streams:
      raise ValueError(f"the checkpoint's data stream was packed with data.pack_streams="
                       f"{state['num_streams']}, not {self._num_streams}: resume with the run's "
                       "data.pack_streams")
    missing = [v for v in self._stream_ids if str(v) not in streams]
    if missing:
      raise ValueError(f"data iterator state lacks packed streams {missing} of this process "
                       "(a state saved by one process of several: restore through the checkpoint)")
    for v, p in zip(self._stream_ids, self._parents):
      p.set_state(streams[str(v)])
    self._rows = int(state["rows"])


def is_packed_state(state) -> bool:
  return isinstance(state, dict) and {"rows", "num_streams", "streams"} <= set(state)


def merged_state(states: dict[int, dict], process_count: int) -> dict:
  """The packed iterator state for any process of `process_count` from the states saved by all
  processes of a run ({process index: state}): every stream's packer state, and the rows each new
  process has read (the global rows read so far, split evenly)."""
  rows = {int(s["rows"]) for s in states.values()}
  if len(rows) != 1:
    raise ValueError(f"processes saved different packed-row counts {sorted(rows)}")
  num_streams = {int(s["num_streams"]) for s in states.values()}
  streams: dict[str, dict] = {}
  for state in states.values():
    streams.update(state["streams"])
  if len(num_streams) != 1 or len(streams) != next(iter(num_streams)):
    raise ValueError(f"the saved data states hold packed streams {sorted(map(int, streams))} of "
                     f"data.pack_streams={sorted(num_streams)}: not a complete set")
  if len(streams) % process_count:
    raise ValueError(f"data.pack_streams={len(streams)} (from the checkpoint) is not divisible by "
                     f"{process_count} processes: resume on a process count that divides it")
  consumed = rows.pop() * len(states)
  if consumed % process_count:
    raise ValueError(f"{consumed} consumed rows do not split over {process_count} processes")
  return {"rows": consumed // process_count, "num_streams": len(streams), "streams": streams}
