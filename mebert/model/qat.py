"""Quantization-aware fine-tuning (QAT): the int8 weights of int8.py, simulated while training.

Why: post-training int8 (int8.py) rounds weights the model never saw rounded. QAT runs every
forward pass of fine-tuning, and its dev evaluations, on the int8-rounded weights, with
straight-through gradients into float32 master weights, so training settles on weights that
survive the rounding and the dev metrics it reports are the int8 model's. Weight-only, as PTQ:
activations and matmuls stay in the compute dtype.

  config.train.quantize_aware = "int8"     # mebert.tasks.quantized wraps the fine-tuning models

The scheme is int8.py's (the arithmetic behind mebert.compress.quantize), so `--mode=eval
--quantize=int8` of a QAT workdir runs exactly what training simulated (tests/compress/test_qat.py
compares the logits):
  - Dense kernels go through qwix (`qwix.quantize_model` with a `QtProvider`): int8, symmetric,
    absmax, one scale per output channel (qwix gives a dot_general weight one scale per
    non-contracting axis: the columns of [in, out]; under `scan_layers` the scan body sees one
    layer's [in, out], so per layer too). qwix's own int8 bound is 127.5 (scale = absmax / 127.5,
    values -128..127); the calibration "absmax,127.5/127" moves it to scale = absmax / 127 with
    values -127..127, int8.py's. Its gradient is straight-through (no clipping: the range
    covers every weight).
  - Embedding tables (words, positions, token types) are fake-quantized here, per row, with
    int8.quantize_array and a straight-through gradient: a lookup is a gather, which qwix does
    not intercept.
  - Biases and LayerNorm parameters stay float, as in int8.py.
Differences that remain: with a bfloat16 compute dtype qwix rounds the kernel already cast to
bfloat16 (PTQ rounds the float32 kernel, then casts), and a scale of a weight exactly on a rounding
tie can round the other way (float32 arithmetic of absmax * (127.5/127) / 127.5 vs absmax / 127).

Parameters are the plain model's tree (weight-only QT creates no variables; `init` fails naming any
collection it would add), so checkpoints, `--mode=eval/predict`, `--quantize=int8` and export-hf
read a QAT workdir as any other. qwix's own PTQ is not used (it fails on scanned layers, see
BENCHMARKS.md); deployment is int8.py's.
"""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax

from mebert.model import int8 as quantize_lib  # the PTQ arithmetic, shared

KEY = "train.quantize_aware"
MODES = ("none", "int8")
# qwix's symmetric int8 range is absmax -> 127.5; this factor makes it absmax -> 127 (int8.py).
CALIBRATION = f"absmax,{(quantize_lib.QMAX + 0.5) / quantize_lib.QMAX!r}"


def check_mode(mode: str | None) -> str:
  """'' / None / 'none' -> 'none', 'int8' -> 'int8'; anything else: a ValueError naming the key."""
  value = "none" if mode in (None, "") else str(mode)
  if value not in MODES:
    raise ValueError(f"{KEY}={mode!r} is not one of {MODES} ('' = none)")
  return value


def _fake_quantize_embeddings(params):
  """Embedding tables rounded to int8 per row as int8.py does; gradients pass straight."""
  def one(path, leaf):
    if quantize_lib.quantized_axis(path, leaf) != -1:  # kernels: qwix; the rest stays float
      return leaf
    rounded = quantize_lib.quantize_array(leaf, -1).dequantize(leaf.dtype)
    return leaf + jax.lax.stop_gradient(rounded - leaf)
  return jax.tree_util.tree_map_with_path(one, params)


@dataclasses.dataclass(frozen=True)
class QatModel:
  """Stands in for a flax model in the fine-tuning steps (init, apply): the qwix-wrapped module,
  applied to params whose embedding tables are fake-quantized. Hashable, as the compiled steps'
  caches want."""

  model: nn.Module  # the module as qwix.quantize_model returned it

  def init(self, rngs, *args, **kwargs):
    variables = self.model.init(rngs, *args, **kwargs)
    extra = sorted(set(variables) - {"params"})
    if extra:  # would be dropped by the steps, which keep params only
      raise ValueError(f"{KEY}: qwix added variable collections {extra}; only weight-only "
                       "quantization without state is supported")
    return variables

  def apply(self, variables, *args, **kwargs):
    variables = {**variables, "params": _fake_quantize_embeddings(variables["params"])}
    return self.model.apply(variables, *args, **kwargs)


@functools.lru_cache(maxsize=8)
def quantize_aware(model: nn.Module, mode: str = "int8"):
  """The model with int8 QAT ("int8"), or the model itself ("none"). Cached: runs of one model
  (a seed sweep) get the same wrapper, hence share the compiled steps."""
  if check_mode(mode) == "none":
    return model
  import qwix

  rule = qwix.QtRule(module_path=".*", weight_qtype="int8",
                     weight_calibration_method=CALIBRATION)
  return QatModel(qwix.quantize_model(model, qwix.QtProvider([rule])))
