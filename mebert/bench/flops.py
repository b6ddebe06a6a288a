"""Analytic FLOP counts of one BERT pretraining step, from the model config and the batch.

Conventions: a multiply-add is 2 FLOPs; only matrix products are counted (layer norms, softmax,
GELU, dropout, embedding gathers and the optimizer update are not: they are a few FLOPs per element
against the thousands per token of the products); training costs 3x the forward (the backward
computes the gradient of both the activations and the weights, each as much as the forward).

Per token, per layer, with hidden size H, feed-forward size I and attention span S (the keys a
query attends to):
  projections: Q, K, V and attention-output: 4 * H*H weights; feed-forward: 2 * H*I weights
    (3 * H*I for GeGLU's gate). N_layer = 4*H*H + 2*H*I matmul weights, 2*N_layer forward FLOPs.
  attention:   scores Q K^T: 2*S*H; probabilities x V: 2*S*H  -> 4*S*H forward FLOPs.
So the encoder trains at 6*N*T + 12*L*H*sum(S) FLOPs for T tokens (N = L*N_layer, the
non-embedding matmul weights): Kaplan et al.'s 6N per token plus the attention term.
Heads, per predicted position: transform H*H and the tied decoder H*V -> 6*(H*H + H*V);
per row: pooler H*H and NSP classifier 2*H -> 6*(H*H + 2*H).

The count is the useful work: what the batch needs. Real (non-pad) tokens only; a token attends
to its own example (S = the length of its packed segment or unpadded row); the MLM head at the
real predictions only (weight > 0); no rematerialisation recompute. A framework that pads, or runs
its MLM head at every position, computes more than this; that extra is not counted, so the
utilisation says how much of the peak went into the batch's own work. (Earlier versions also
reported a "slot" utilisation, every position's work divided by mebert's step time: it counted
the peers' padding at mebert's rate and read above 100%, so it is gone.)
"""

from __future__ import annotations

import numpy as np


def layer_matmul_weights(hidden: int, intermediate: int, geglu: bool = False) -> int:
  return 4 * hidden * hidden + (3 if geglu else 2) * hidden * intermediate


def nonembedding_matmul_weights(size: dict, geglu: bool = False) -> int:
  return size["num_layers"] * layer_matmul_weights(size["hidden_size"], size["intermediate_size"], geglu)


def step_flops(size: dict, vocab_size: int, *, tokens: float, attention_pairs: float,
               predictions: float, rows: float, geglu: bool = False) -> float:
  """Training FLOPs (forward + backward) of one step.

  tokens: positions run through the encoder; attention_pairs: sum over those positions of the
  keys each attends to; predictions: MLM positions through the head; rows: pooler + NSP rows.
  """
  hidden, layers = size["hidden_size"], size["num_layers"]
  encoder = 6 * nonembedding_matmul_weights(size, geglu) * tokens  # 3 x 2 FLOPs per weight
  attention = 12 * layers * hidden * attention_pairs  # 3 x (2 + 2) * S * H per token per layer
  mlm_head = 6 * (hidden * hidden + hidden * vocab_size) * predictions
  nsp_head = 6 * (hidden * hidden + 2 * hidden) * rows
  return float(encoder + attention + mlm_head + nsp_head)


def segment_lengths(segment_ids: np.ndarray) -> np.ndarray:
  """Lengths of every non-padding segment of a [B, L] batch (segment ids 1..k per row, 0 = pad)."""
  lengths = []
  for row in np.asarray(segment_ids):
    ids, counts = np.unique(row[row != 0], return_counts=True)
    lengths.extend(counts.tolist())
  return np.asarray(lengths, np.int64)


def useful_flops(size: dict, vocab_size: int, segment_ids: np.ndarray, prediction_weights: np.ndarray,
                 nsp_labels: np.ndarray) -> float:
  seg = segment_lengths(segment_ids)
  return step_flops(size, vocab_size, tokens=float(seg.sum()), attention_pairs=float((seg**2).sum()),
                    predictions=float((np.asarray(prediction_weights) > 0).sum()),
                    rows=float((np.asarray(nsp_labels) >= 0).sum()))
