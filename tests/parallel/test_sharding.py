"""Where parameters and activations live on the (data, fsdp, tensor) mesh, and that the placement
does not change the numbers: the same losses on every mesh, a golden file of bert_base's specs.

Regenerate the golden file after an intended change of the rules or the model:
  MEBERT_REGEN_GOLDEN=1 PYTHONPATH=. python -m pytest tests/parallel/test_sharding.py -k golden
"""

import dataclasses
import json
import os
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import parallel_helpers as H
from mebert.model.pretraining import BertForPreTraining
from mebert.parallel import mesh as mesh_lib

GOLDEN = pathlib.Path(__file__).with_name("golden") / "bert_base_2x2x2.json"


def _specs(shardings):
  return mesh_lib.partition_specs(shardings)


def test_fsdp_on_embed_and_tensor_on_heads_mlp_vocab():
  _, shardings = H.state_shardings(H.TINY, H.make_mesh((2, 2, 2)))
  specs = _specs(shardings.params)
  layer = "bert/encoder/layer_0/"
  expected = {
      "bert/embeddings/word_embeddings/embedding": ["tensor", "fsdp"],  # vocab-parallel, FSDP
      "bert/embeddings/position_embeddings/embedding": [None, "fsdp"],
      "bert/embeddings/LayerNorm/scale": ["fsdp"],
      layer + "attention/self/query/kernel": ["fsdp", "tensor"],  # columns = heads x head_dim
      layer + "attention/self/query/bias": ["tensor"],
      layer + "attention/output/dense/kernel": ["tensor", "fsdp"],  # rows = heads x head_dim
      layer + "intermediate/dense/kernel": ["fsdp", "tensor"],
      layer + "output/dense/kernel": ["tensor", "fsdp"],
      "cls/predictions/bias": ["tensor"],
      "cls/predictions/transform/dense/kernel": ["fsdp", None],
  }
  assert {k: specs[k] for k in expected} == expected
  # Every parameter is split over fsdp on its hidden dimension, except the few without one.
  unsplit = sorted(k for k, s in specs.items() if "fsdp" not in s)
  assert unsplit == sorted([layer + "attention/self/key/bias", layer + "attention/self/query/bias",
                            layer + "attention/self/value/bias", layer + "intermediate/dense/bias",
                            "bert/pooler/dense/bias", "cls/predictions/bias",
                            "cls/predictions/transform/dense/bias", "cls/seq_relationship/bias"])
  # Adam's moments are placed like the parameters they follow.
  adam = next(n for n in jax.tree.leaves(shardings.opt_state, is_leaf=lambda n: hasattr(n, "mu"))
              if hasattr(n, "mu"))
  assert _specs(adam.mu) == specs and _specs(adam.nu) == specs


def test_scanned_layers_keep_the_layers_axis_whole():
  mesh = H.make_mesh((2, 2, 2))
  cfg = dataclasses.replace(H.TINY, num_layers=2)
  unrolled = _specs(H.state_shardings(cfg, mesh)[1].params)
  scanned = _specs(H.state_shardings(dataclasses.replace(cfg, scan_layers=True), mesh)[1].params)
  layer_keys = [k for k in scanned if k.startswith("bert/encoder/layer/")]
  assert len(layer_keys) == 16
  for key in layer_keys:
    assert scanned[key][0] is None, key  # every device holds all layers of its slice
    assert scanned[key][1:] == unrolled[key.replace("encoder/layer/", "encoder/layer_0/")], key
  others = {k: v for k, v in scanned.items() if k not in layer_keys}
  assert others == {k: v for k, v in unrolled.items() if "/encoder/" not in k}


def test_activations_are_constrained_at_block_boundaries():
  if not jax.config.jax_use_shardy_partitioner:
    pytest.skip("reads Shardy's sharding_constraint ops")
  mesh = H.make_mesh((2, 2, 2))
  cfg = dataclasses.replace(H.TINY, num_layers=2)
  model = BertForPreTraining(cfg)
  ids = jnp.ones((H.BATCH, H.SEQ), jnp.int32)
  with jax.set_mesh(mesh), nn.logical_axis_rules(mesh_lib.DEFAULT_RULES):
    params = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.key(0), ids)))
    text = jax.jit(model.apply).lower(params, ids).as_text()
  constraints = [line.split("<@mesh, ")[1].split(">")[0] for line in text.splitlines()
                 if "sdy.sharding_constraint" in line]
  hidden = '[{"data", "fsdp"}, {}, {}]'  # [B, L, H]: batch split, hidden whole (not FSDP's)
  heads = '[{"data", "fsdp"}, {}, {"tensor"}, {}]'  # [B, L, N, D]: heads split
  mlp = '[{"data", "fsdp"}, {}, {"tensor"}]'  # [B, L, F]: feed-forward columns split
  # The embeddings' output, then after attention and after the feed-forward of every layer.
  assert constraints.count(hidden) == 1 + 2 * cfg.num_layers
  assert constraints.count(heads) == 4 * cfg.num_layers  # q, k, v and the attention output
  assert constraints.count(mlp) == cfg.num_layers
  assert set(constraints) == {hidden, heads, mlp}


def test_indivisible_dimension_is_left_whole_not_an_error():
  mesh = H.make_mesh((1, 1, 8))
  cfg = dataclasses.replace(H.TINY, vocab_size=100)  # 100 rows over 8 devices
  _, shardings = H.state_shardings(cfg, mesh)
  specs = _specs(shardings.params)
  assert specs["bert/embeddings/word_embeddings/embedding"] == [None, "fsdp"]
  assert specs["cls/predictions/bias"] == [None]
  assert specs["bert/encoder/layer_0/intermediate/dense/kernel"] == ["fsdp", "tensor"]  # 64 / 8
  # and arrays can be placed with those shardings
  table = jax.device_put(np.zeros((100, 32), np.float32),
                         shardings.params["bert"]["embeddings"]["word_embeddings"]["embedding"])
  assert table.addressable_shards[0].data.shape == (100, 32)


def test_global_batch_assembles_the_rows_over_the_batch_axes():
  mesh = H.make_mesh((2, 2, 2))
  local = H.batch()
  global_ = mesh_lib.global_batch(local, mesh)
  assert mesh_lib.process_batch_shards(mesh) == 4
  for key, value in local.items():
    assert global_[key].shape == value.shape
    assert global_[key].sharding.spec == P(("data", "fsdp"))
    np.testing.assert_array_equal(np.asarray(global_[key]), value)
  # each device of a tensor pair holds the same quarter of the rows
  rows = {d: s.data for s in global_["input_ids"].addressable_shards for d in [s.device]}
  assert all(v.shape == (2, H.SEQ) for v in rows.values())


def _assert_same_training(shapes):
  reference, ref_state = H.run_steps(shapes[0])
  assert reference[-1] < reference[0]  # it trains
  for shape in shapes[1:]:
    losses, state = H.run_steps(shape)
    np.testing.assert_allclose(losses, reference, atol=1e-5, rtol=0, err_msg=f"{shape} vs {shapes[0]}")
    for a, b in zip(jax.tree.leaves(ref_state.params), jax.tree.leaves(state.params)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=0, err_msg=str(shape))


def test_fsdp_and_all_three_axes_give_the_same_losses():
  """1x8x1 (FSDP only) and 2x2x2 (data, FSDP and tensor): five fp32 steps with dropout, equal
  losses and parameters. (Data parallel = one device: tests/train/test_train_step.py.)"""
  _assert_same_training([(1, 8, 1), (2, 2, 2)])


@pytest.mark.slow
def test_meshes_give_the_same_losses():
  """data, fsdp, tensor = 8x1x1, 1x8x1, 2x4x1, 2x2x2: five fp32 steps, dropout on, equal losses."""
  _assert_same_training([(8, 1, 1), (1, 8, 1), (2, 4, 1), (2, 2, 2)])


def test_golden_partition_specs_bert_base_2x2x2():
  from mebert.train import compile_report

  config = H.load_config("bert_base")
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 2, 2, 2
  specs = compile_report.parameter_specs(config)
  if os.environ.get("MEBERT_REGEN_GOLDEN"):
    GOLDEN.parent.mkdir(exist_ok=True)
    lines = [f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in sorted(specs.items())]
    GOLDEN.write_text("{\n" + ",\n".join(lines) + "\n}\n")  # one parameter per line
  golden = json.loads(GOLDEN.read_text())
  changed = {k: (golden.get(k), specs.get(k)) for k in sorted(set(golden) | set(specs))
             if golden.get(k) != specs.get(k)}
  assert not changed, f"(golden, now) per parameter: {changed}; regenerate with MEBERT_REGEN_GOLDEN=1"
