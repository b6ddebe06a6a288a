"""Layer-wise learning-rate decay, reduce-on-plateau on dev values, and the early-stopping rule."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mebert.tasks import optim
from mebert.train.selection import Selection


def _tree(scanned=False):
  layer = {"attention": {"self": {"query": {"kernel": jnp.ones((4, 4))}}}}
  encoder = ({"layer": jax.tree.map(lambda x: jnp.ones((3,) + x.shape), layer)} if scanned else
             {f"layer_{i}": layer for i in range(3)})
  return {"bert": {"embeddings": {"word_embeddings": {"embedding": jnp.ones((10, 4))}},
                   "encoder": encoder, "pooler": {"dense": {"kernel": jnp.ones((4, 4))}}},
          "classifier": {"kernel": jnp.ones((4, 2)), "bias": jnp.ones((2,))}}


def test_layer_decay_scales_each_depth():
  tx = optim.scale_by_layer(0.5, num_layers=3)
  updates, _ = tx.update(_tree(), tx.init(_tree()))
  assert float(updates["classifier"]["kernel"][0, 0]) == 1.0  # the head keeps the full rate
  assert float(updates["bert"]["pooler"]["dense"]["kernel"][0, 0]) == 1.0
  enc = updates["bert"]["encoder"]
  assert [float(enc[f"layer_{i}"]["attention"]["self"]["query"]["kernel"][0, 0]) for i in range(3)] == [
      0.125, 0.25, 0.5]  # layer i at depth i + 1: 0.5 ** (4 - (i + 1))
  assert float(updates["bert"]["embeddings"]["word_embeddings"]["embedding"][0, 0]) == 0.0625
  stacked, _ = tx.update(_tree(scanned=True), optax.EmptyState())
  kernel = stacked["bert"]["encoder"]["layer"]["attention"]["self"]["query"]["kernel"]
  np.testing.assert_array_equal(kernel[:, 0, 0], [0.125, 0.25, 0.5])  # same, along the layer axis


def _plateau_config(**kw):
  from mebert.tasks.defaults import finetune_defaults

  c = finetune_defaults()
  c.train.num_steps, c.train.warmup_steps = 10, 0
  c.reduce_on_plateau.enabled = True
  c.reduce_on_plateau.patience, c.reduce_on_plateau.factor = 2, 0.5
  for k, v in kw.items():
    setattr(c.reduce_on_plateau, k, v)
  return c


def test_reduce_on_plateau_scales_updates_after_patience_evals():
  c = _plateau_config()
  params = {"w": jnp.ones(3)}
  tx = optim.make_optimizer(c, num_layers=1)
  state = tx.init(params)
  scales = []
  for value in (1.0, 0.5, 0.6, 0.7, 0.8, 0.9):  # improves once, then stalls
    state, scale = optim.step_plateau(state, c.reduce_on_plateau, value)
    scales.append(scale)
  assert scales == [1.0, 1.0, 1.0, 0.5, 0.5, 0.25]
  grads = {"w": jnp.ones(3)}
  update = jax.jit(tx.update)  # one program, not one per eager op
  full, _ = update(grads, tx.init(params), params)
  reduced, _ = update(grads, state, params)
  np.testing.assert_allclose(reduced["w"], 0.25 * full["w"], rtol=1e-6)


def test_early_stopping_rule():
  es = Selection("accuracy", "max", patience=2, min_delta=0.0)
  history = [es.update(s, {"accuracy": a}) for s, a in ((1, 0.5), (2, 0.6), (3, 0.6), (4, 0.55))]
  assert history == [True, True, False, False] and es.stopped and es.best_step == 2
  loss = Selection.from_config(_ns(metric="loss", mode="auto", patience=1, min_delta=0.0))
  assert loss.mode == "min" and loss.update(1, {"loss": 2.0}) and loss.update(2, {"loss": 1.0})
  with pytest.raises(ValueError, match="early_stopping.metric='f2'"):
    Selection("f2", "max", 1, 0.0).update(1, {"f1": 0.3})


def _ns(**kw):
  from ml_collections import ConfigDict

  return ConfigDict(kw)
