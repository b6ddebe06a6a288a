"""The task heads of the families beyond BERT: their Hugging Face layouts, and a packed row of two
examples giving each example's logits as if it ran alone (first-token and mean pooling)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mebert.model.config import ModelConfig
from mebert.tasks.model import BertForTask

BASE = dict(vocab_size=50, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
            max_position_embeddings=32, dropout_rate=0.0, attention_dropout_rate=0.0)
FAMILIES = {
    "roberta": dict(family="roberta", type_vocab_size=1, position_offset=1),
    "electra": dict(family="electra", embedding_size=16),
    "modernbert": dict(family="modernbert", pre_layer_norm=True, hidden_act="geglu",
                       use_bias=False, layer_norm_bias=False, position_encoding="rotary",
                       use_segment_embeddings=False, first_layer_attention_norm=False,
                       classifier_pooling="mean"),
}
LAYOUT = {"roberta": {"dense", "out_proj"}, "electra": {"dense", "out_proj"},
          "modernbert": {"dense", "LayerNorm", "out_proj"}}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_packed_sequence_logits_equal_each_example_alone(family):
  cfg = ModelConfig(**BASE, **FAMILIES[family])
  model = BertForTask(cfg, "classification", 3)
  rng = np.random.default_rng(0)
  a, b = rng.integers(5, 50, 7), rng.integers(5, 50, 5)
  packed = np.zeros((1, 16), np.int32)
  packed[0, :7], packed[0, 7:12] = a, b
  seg = np.array([[1] * 7 + [2] * 5 + [0] * 4], np.int32)
  pos = np.array([list(range(7)) + list(range(5)) + [0] * 4], np.int32)
  cls = np.array([[0, 7]], np.int32)
  params = nn.unbox(jax.jit(lambda r: model.init(r, jnp.asarray(packed)))(jax.random.key(0)))
  assert set(params["params"]["classifier"]) == LAYOUT[family]
  assert "pooler" not in params["params"]["bert"]
  run = jax.jit(lambda p, i, s, q, c: model.apply(p, i, None, s, q, c))
  both = run(params, packed, seg, pos, cls)[0]  # [S, C]
  for k, ids in enumerate((a, b)):
    alone = np.zeros((1, 16), np.int32)
    alone[0, :len(ids)] = ids
    mask = (np.arange(16) < len(ids)).astype(np.int32)[None]
    want = run(params, alone, mask, np.arange(16, dtype=np.int32)[None], np.zeros((1, 1), np.int32))
    np.testing.assert_allclose(both[k], want[0, 0], atol=1e-5)
