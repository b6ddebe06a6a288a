"""data.mask_token_prob / data.random_token_prob: what becomes of the chosen tokens (BERT's
0.8 / 0.1 by default, ELECTRA's released code 0.85 / 0), checked statistically at a fixed seed."""

import importlib.util
import pathlib
import re

import numpy as np
import pytest

from mebert.data import instances, pipeline

REPO = pathlib.Path(__file__).resolve().parents[2]
MASK = 4


def _rates(mask_token_prob, random_token_prob, tokens=100_000):
  """(selected share, [MASK] share, random share, unchanged share) of one long masked sequence."""
  rng = np.random.default_rng(0)
  ids = rng.integers(100, 30_000, tokens).astype(np.int32)
  special = np.zeros(tokens, bool)
  special[::50] = True  # never chosen
  out, pos, orig = instances.mask_tokens(
      ids, special, rng, masked_lm_prob=0.15, max_predictions=tokens, mask_id=MASK,
      replacement_ids=np.arange(100, 30_000, dtype=np.int32), mask_token_prob=mask_token_prob,
      random_token_prob=random_token_prob)
  assert not special[pos].any() and np.array_equal(orig, ids[pos])
  changed = out != ids
  assert not changed[np.setdiff1d(np.arange(tokens), pos)].any()  # only chosen tokens change
  masked = np.mean(out[pos] == MASK)
  random = np.mean(changed[pos] & (out[pos] != MASK))
  return len(pos) / (~special).sum(), masked, random, 1.0 - masked - random


@pytest.mark.parametrize("mask_token_prob, random_token_prob", [
    (0.8, 0.1),  # BERT
    (0.85, 0.0),  # ELECTRA's pretrain_helpers.mask
    (1.0, 0.0),  # the ELECTRA paper's REPLACE(x, m, [MASK])
    (0.5, 0.3),
])
def test_replacement_rates_follow_the_options(mask_token_prob, random_token_prob):
  selected, masked, random, kept = _rates(mask_token_prob, random_token_prob)
  # ~14,700 chosen tokens: 4 sigma of a share p is at most 4 * sqrt(0.25 / 14700) = 0.0165.
  assert abs(selected - 0.15) < 1e-3  # the count is exact, up to rounding
  assert abs(masked - mask_token_prob) < 0.0165
  assert abs(random - random_token_prob) < 0.0165
  assert abs(kept - (1 - mask_token_prob - random_token_prob)) < 0.0165
  if random_token_prob == 0:
    assert random == 0  # not merely rare


def test_default_rates_keep_the_bert_stream():
  # BERT's rates put the random band at the top, as before the options: old seeds, old examples.
  rng_a, rng_b = np.random.default_rng(1), np.random.default_rng(1)
  ids = np.arange(10, 200, dtype=np.int32)
  kw = dict(masked_lm_prob=0.3, max_predictions=100, mask_id=MASK, replacement_ids=np.arange(10, 300))
  default = instances.mask_tokens(ids, np.zeros(len(ids), bool), rng_a, **kw)
  explicit = instances.mask_tokens(ids, np.zeros(len(ids), bool), rng_b, mask_token_prob=0.8,
                                   random_token_prob=0.1, **kw)
  assert all(np.array_equal(x, y) for x, y in zip(default, explicit))


def _electra_data(data_config):
  spec = importlib.util.spec_from_file_location("electra_small", REPO / "configs/pretrain/electra_small.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  recipe = module.get_config("tiny").data
  data_config.mask_token_prob, data_config.random_token_prob = (recipe.mask_token_prob,
                                                                recipe.random_token_prob)
  data_config.next_sentence = recipe.next_sentence
  return data_config


def test_electra_recipe_masks_85_percent_and_never_draws_a_random_token(data_config, spm_tok):
  maker = pipeline.make_example_maker(_electra_data(data_config), spm_tok, split="train", seed=0)
  chosen = masked = random = 0
  for i in range(400):
    ex = maker(0, i)
    w = ex["masked_lm_weights"] > 0
    now, was = ex["input_ids"][ex["masked_lm_positions"][w]], ex["masked_lm_ids"][w]
    chosen += w.sum()
    masked += (now == spm_tok.mask_id).sum()
    random += ((now != spm_tok.mask_id) & (now != was)).sum()
  # ~3,500 chosen tokens: 4 sigma of 0.85 is 0.024.
  assert chosen > 3000 and abs(masked / chosen - 0.85) < 0.024 and random == 0


@pytest.mark.parametrize("key, value, message", [
    ("mask_token_prob", 1.2, "data.mask_token_prob=1.2 is not a probability in [0, 1]"),
    ("random_token_prob", -0.1, "data.random_token_prob=-0.1 is not a probability in [0, 1]"),
    ("random_token_prob", 0.3, "data.mask_token_prob=0.8 + data.random_token_prob=0.3 exceed 1"),
])
def test_bad_rates_are_named(data_config, spm_tok, key, value, message):
  data_config[key] = value
  with pytest.raises(ValueError, match=re.escape(message)):
    pipeline.make_example_maker(data_config, spm_tok, split="train", seed=0)
