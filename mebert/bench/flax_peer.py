"""Times the Flax peer: `FlaxBertForPreTraining` from transformers 4.x, jitted, with optax AdamW.

  /path/to/venv/bin/python mebert/bench/flax_peer.py --spec=SPEC.json --batches=B.npz --out=OUT.json

transformers 5 dropped its Flax models, so this runs in a separate environment with
`transformers<5`, jax, flax and optax (the harness's --flax-python), and imports nothing from
mebert: only the stdlib-and-numpy helpers beside it, by path, and mebert/host_memory.py (by path,
through timing.worker_main), so that it runs with the same host tuning as mebert's worker. The training step follows
transformers' examples/flax/language-modeling/run_mlm_flax.py: one jitted function with the
parameters and optimizer state donated, the MLM loss over labelled positions (the head runs at
every position), plus the NSP loss; AdamW and clipping as mebert's defaults. Batches whose
lengths vary (real text) are padded up to a multiple of --pad-multiple so that a handful of shapes
compile, not one per length.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import batches as batches_lib  # noqa: E402  (this folder's file, numpy only)
import numpy as np  # noqa: E402
import timing  # noqa: E402


def pad_to_multiple(batch: dict, multiple: int) -> dict:
  length = batch["input_ids"].shape[1]
  target = -(-length // multiple) * multiple
  if target == length:
    return batch
  out = {}
  for key, value in batch.items():
    if value.ndim == 2:
      fill = -100 if key == "labels" else 0
      out[key] = np.pad(value, ((0, 0), (0, target - length)), constant_values=fill)
    else:
      out[key] = value
  return out


def run(spec: dict, batch_path: str) -> dict:
  import jax
  import jax.numpy as jnp
  import optax
  import transformers
  from transformers import BertConfig, FlaxBertForPreTraining

  rss_start = timing.current_rss_mb()
  size = spec["size"]
  config = BertConfig(
      vocab_size=spec["vocab_size"], hidden_size=size["hidden_size"],
      num_hidden_layers=size["num_layers"], num_attention_heads=size["num_heads"],
      intermediate_size=size["intermediate_size"], hidden_act="gelu",
      max_position_embeddings=max(512, spec["seq_len"]), type_vocab_size=2,
      hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, layer_norm_eps=1e-12)
  model = FlaxBertForPreTraining(config, seed=0, dtype=jnp.float32)

  def decay_mask(params):
    flat = {path: not (any("LayerNorm" in str(p) for p in path) or path[-1] == "bias")
            for path in _flatten(params)}
    return _unflatten(flat)

  tx = optax.chain(optax.clip_by_global_norm(1.0),
                   optax.adamw(1e-4, b1=0.9, b2=0.999, eps=1e-6, weight_decay=0.01, mask=decay_mask))
  params = model.params
  opt_state = tx.init(params)

  def loss_fn(params, batch, rng):
    out = model(batch["input_ids"], attention_mask=batch["attention_mask"],
                token_type_ids=batch["token_type_ids"], params=params, dropout_rng=rng, train=True)
    labels = batch["labels"]
    weights = (labels >= 0).astype(jnp.float32)
    log_probs = jax.nn.log_softmax(out.prediction_logits.astype(jnp.float32), axis=-1)
    ce = -jnp.take_along_axis(log_probs, jnp.maximum(labels, 0)[..., None], axis=-1)[..., 0]
    mlm = jnp.sum(ce * weights) / jnp.maximum(jnp.sum(weights), 1.0)
    nsp_log_probs = jax.nn.log_softmax(out.seq_relationship_logits.astype(jnp.float32), axis=-1)
    nsp = -jnp.mean(jnp.take_along_axis(nsp_log_probs, batch["next_sentence_label"][:, None], axis=-1))
    return mlm + nsp

  def train_step(params, opt_state, batch, rng):
    rng, dropout_rng = jax.random.split(rng)
    loss, grads = jax.value_and_grad(loss_fn)(params, batch, dropout_rng)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, rng

  step = jax.jit(train_step, donate_argnums=(0, 1))
  multiple = int(spec.get("flax_pad_multiple", 32))
  host_batches = [pad_to_multiple(b, multiple) for b in batches_lib.load(batch_path, "peer")]
  device_batches = [{k: jnp.asarray(v.astype(np.int32)) for k, v in b.items()} for b in host_batches]
  holder = {"params": params, "opt_state": opt_state, "rng": jax.random.PRNGKey(0)}

  def run_steps(n: int, first: int = 0) -> None:
    p, o, r, loss = holder["params"], holder["opt_state"], holder["rng"], None
    for i in range(n):
      p, o, loss, r = step(p, o, device_batches[(first + i) % len(device_batches)], r)
    jax.block_until_ready((p, o, loss))
    holder.update(params=p, opt_state=o, rng=r, loss=loss)

  out = {"jax": jax.__version__, "transformers": transformers.__version__,
         "padded_lengths": [int(b["input_ids"].shape[1]) for b in host_batches]}
  # Compile every distinct shape first (its own program each), timed as compile time.
  start = time.perf_counter()
  seen = set()
  for i, b in enumerate(device_batches):
    if b["input_ids"].shape not in seen:
      seen.add(b["input_ids"].shape)
      run_steps(1, first=i)
  out["compile_s"] = time.perf_counter() - start
  out["compiled_shapes"] = len(seen)
  if spec["warmup"] > 1:
    run_steps(spec["warmup"] - 1, first=1)
  out.update(timing.timed_rounds(run_steps, steps=spec["steps"], rounds=spec["rounds"]))
  out["final_loss"] = float(holder["loss"])
  out["peak_rss_mb"] = timing.peak_rss_mb()
  out["rss_at_start_mb"] = rss_start
  device = jax.devices()[0]
  if device.platform != "cpu":
    out["device_peak_bytes"] = (device.memory_stats() or {}).get("peak_bytes_in_use")
  return out


def _flatten(tree, prefix=()):
  for key, value in tree.items():
    if isinstance(value, Mapping):
      yield from _flatten(value, prefix + (key,))
    else:
      yield prefix + (key,)


def _unflatten(flat: dict) -> dict:
  out: dict = {}
  for path, value in flat.items():
    node = out
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = value
  return out


def main(argv=None) -> None:
  timing.worker_main(run, __doc__.split("\n")[0], argv)


if __name__ == "__main__":
  main()
