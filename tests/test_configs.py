"""Every experiment file in configs/ loads, is locked, and builds its model (abstractly)."""

import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import pytest

from mebert.model.config import ModelConfig
from mebert.model.pretraining import BertForPreTraining

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"
# Config files with the arguments they accept (None = the default).
ARGS = {"pretrain/bert_base.py": [None, "phase2"],
        "pretrain/bert_large.py": [None, "phase2", "lamb", "lamb_phase2"],
        "pretrain/roberta_base.py": [None, "tiny"], "pretrain/electra_small.py": [None, "tiny"],
        "pretrain/modernbert_base.py": [None, "context", "tiny", "tiny_context"],
        "experiments/encodings.py": [None, "sinusoidal", "relative", "rotary", "alibi", "none",
                                     "concat", "preln_geglu", "rotary_local"]}


def _cases():
  for path in sorted(CONFIGS.rglob("*.py")):
    rel = str(path.relative_to(CONFIGS))
    for arg in ARGS.get(rel, [None]):
      yield pytest.param(path, arg, id=f"{rel}:{arg}" if arg else rel)


def load(path, arg=None):
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


@pytest.mark.parametrize("path, arg", list(_cases()))
def test_config_loads_and_builds_its_model(path, arg):
  config = load(path, arg)
  if "model" not in config:
    pytest.skip("not a model config")
  model_config = ModelConfig.from_dict(config.model, vocab_size=config.data.get("vocab_size", 30522))
  seq_len = int(config.data.seq_len)
  assert seq_len <= model_config.max_position_embeddings
  ids = jax.ShapeDtypeStruct((1, seq_len), jnp.int32)
  shapes = jax.eval_shape(BertForPreTraining(model_config).init, jax.random.key(0), ids)
  assert jax.tree.leaves(shapes)


def test_configs_are_locked_against_new_keys():
  from ml_collections import config_flags  # noqa: F401

  config = load(CONFIGS / "pretrain" / "tiny.py")
  config.lock()
  with pytest.raises(AttributeError):
    config.model.num_layerz = 2
