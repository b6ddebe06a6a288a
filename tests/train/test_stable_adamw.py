"""StableAdamW (ModernBERT's optimizer): AdamW whose per-tensor step is divided by
max(1, RMS(g^2 / v)); checked against a NumPy transcription of Wortsman et al. 2023, Algorithm 2."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from ml_collections import config_dict

from mebert.train import optimizer

B1, B2, EPS, LR, WD = 0.9, 0.98, 1e-6, 1e-2, 0.1


def _reference(params: dict, grads: list[dict], decays: dict) -> dict:
  """The paper's loop in NumPy, tensor by tensor."""
  p = {k: np.array(v, np.float64) for k, v in params.items()}
  m = {k: np.zeros_like(v) for k, v in p.items()}
  v = {k: np.zeros_like(x) for k, x in p.items()}
  for t, g in enumerate(grads, start=1):
    for k in p:
      gk = np.asarray(g[k], np.float64)
      m[k] = B1 * m[k] + (1 - B1) * gk
      v[k] = B2 * v[k] + (1 - B2) * gk * gk
      m_hat, v_hat = m[k] / (1 - B1 ** t), v[k] / (1 - B2 ** t)
      rms = np.sqrt(np.mean(gk * gk / np.maximum(v_hat, EPS * EPS)))
      rate = LR / max(1.0, rms)
      p[k] = p[k] - rate * (m_hat / (np.sqrt(v_hat) + EPS) + (WD * p[k] if decays[k] else 0.0))
  return p


def _run(tx, params, grads):
  state = tx.init(params)
  for g in grads:
    updates, state = tx.update(g, state, params)
    params = optax.apply_updates(params, updates)
  return params


def _params_and_grads(spike: float):
  rng = np.random.default_rng(0)
  params = {"kernel": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32),
            "bias": jnp.asarray(rng.normal(size=(3,)), jnp.float32)}
  grads = [{k: jnp.asarray(rng.normal(size=v.shape), jnp.float32) for k, v in params.items()}
           for _ in range(4)]
  grads[3] = {k: g * spike for k, g in grads[3].items()}  # the last step's gradient jumps
  return params, grads


def _mask(params):
  return {"kernel": True, "bias": False}


def test_stable_adamw_matches_the_papers_update_through_a_gradient_spike():
  params, grads = _params_and_grads(spike=30.0)
  ours = _run(optimizer.stable_adamw(LR, B1, B2, EPS, WD, _mask), params, grads)
  ref = _reference(params, grads, _mask(params))
  for k in params:
    np.testing.assert_allclose(np.asarray(ours[k]), ref[k], rtol=1e-5, atol=1e-6)
  # The spike is what the clip is for: AdamW's last step is larger than StableAdamW's.
  adamw = _run(optax.adamw(LR, B1, B2, EPS, weight_decay=WD, mask=_mask), params, grads)
  before = _run(optax.adamw(LR, B1, B2, EPS, weight_decay=WD, mask=_mask), params, grads[:3])
  moved_adamw = np.abs(np.asarray(adamw["kernel"] - before["kernel"])).max()
  moved_ours = np.abs(np.asarray(ours["kernel"] - _run(optimizer.stable_adamw(
      LR, B1, B2, EPS, WD, _mask), params, grads[:3])["kernel"])).max()
  assert moved_ours < 0.6 * moved_adamw  # about half here


def test_stable_adamw_is_adamw_while_gradients_stay_within_their_second_moment():
  """At step 1, g^2 / v_hat = 1 exactly, so RMS = 1 and nothing is clipped: AdamW's step."""
  params, grads = _params_and_grads(spike=1.0)
  ours = _run(optimizer.stable_adamw(LR, B1, B2, EPS, WD, _mask), params, grads[:1])
  adamw = _run(optax.adamw(LR, B1, B2, EPS, weight_decay=WD, mask=_mask), params, grads[:1])
  for k in params:
    np.testing.assert_allclose(np.asarray(ours[k]), np.asarray(adamw[k]), rtol=1e-6, atol=1e-7)


def test_train_optimizer_stable_adamw_builds_and_jits_with_the_schedule():
  train = config_dict.ConfigDict(dict(
      optimizer="stable_adamw", learning_rate=1e-3, b1=0.9, b2=0.98, eps=1e-6, weight_decay=1e-5,
      clip_grad_norm=1.0, warmup_steps=2, warmup_ratio=0.0, num_steps=10, schedule_steps=0,
      schedule="constant", end_learning_rate_ratio=0.0, power=1.0))
  tx = optimizer.make_optimizer(train)
  params = {"dense": {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros((2,))}}
  state = tx.init(params)
  updates, state = jax.jit(tx.update)(jax.tree.map(jnp.ones_like, params), state, params)
  assert jnp.all(jnp.isfinite(updates["dense"]["kernel"]))
  assert int(optimizer.schedule_count(state)) == 1


def test_an_unknown_optimizer_names_the_key():
  with pytest.raises(ValueError, match="train.optimizer='adam_w'"):
    optimizer.make_optimizer(config_dict.ConfigDict(dict(
        optimizer="adam_w", learning_rate=1e-3, b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.0,
        warmup_steps=0, warmup_ratio=0.0, num_steps=10, schedule_steps=0, schedule="constant",
        end_learning_rate_ratio=0.0, power=1.0)))
