"""A tiny random BERT built from shapes alone (no init, no compile, no torch) for the interop tests."""

import numpy as np

from mebert.interop import hf_import, hf_names
from mebert.model.config import ModelConfig

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "a", "film", "is", "good", "bad",
         "not", ",", ".", "!", "##s", "##ly"] + [f"w{i}" for i in range(47)]
CFG = ModelConfig(vocab_size=len(VOCAB), hidden_size=32, num_layers=2, num_heads=4,
                  intermediate_size=64, max_position_embeddings=64)


def random_params(cfg, num_labels=None, seed=0):
  rng = np.random.default_rng(seed)
  shapes = hf_import._expected_shapes(cfg, num_labels)  # pylint: disable=protected-access
  return hf_names.unflatten({p: rng.normal(0, 0.05, s).astype(np.float32) for p, s in shapes.items()})
