"""Held-out splits without leaks: SST-2's phrases grouped by the sentences that contain them."""

import random
import time

import pytest

from mebert.tasks import data, holdout
from mebert.tasks.data import Example


def _leaks(held, train, sample: int, seed: int = 0) -> int:
  """How many of `sample` held-out texts occur word for word inside some training text."""
  corpus = "\n".join(f" {e.text} " for e in train)
  picked = random.Random(seed).sample(held, min(sample, len(held)))
  return sum(f" {e.text} " in corpus for e in picked)


def test_sst2_containment_holdout_has_no_leaks_and_is_deterministic(shared_data, tiny_config):
  path = shared_data / "sst2" / "train.tsv"
  if not path.is_file():
    pytest.skip(f"{path} not found")
  c = tiny_config()
  examples = data.read_examples(str(path), c.task, c.data)
  assert len(examples) == 67349
  start = time.perf_counter()
  train, held = holdout.holdout_split(examples, 0.05, group="containment")
  print(f"containment split of {len(examples)} phrases: {time.perf_counter() - start:.1f}s")
  assert 0.03 < len(held) / len(examples) < 0.08 and len(train) + len(held) == len(examples)
  assert _leaks(held, train, 500) == 0
  # The hash of each phrase (the old split) leaks most of its held-out phrases.
  text_train, text_held = holdout.holdout_split(examples, 0.05, group="text")
  assert _leaks(text_held, text_train, 200) > 150
  # Deterministic and independent of the file's order.
  shuffled = list(examples)
  random.Random(1).shuffle(shuffled)
  _, held2 = holdout.holdout_split(shuffled, 0.05, group="containment")
  assert sorted(e.line for e in held2) == sorted(e.line for e in held)
  # A nested selection split shares nothing with the evaluation split.
  sel_train, sel = holdout.holdout_split(examples, 0.05, offset=0.05, group="containment")
  assert not {e.line for e in held} & {e.line for e in sel_train + sel}
  assert _leaks(sel, sel_train, 300) == 0


def test_containment_on_a_small_case():
  def ex(text):
    return Example(text, None, "0")

  texts = ["the movie is good", "is good", "good", "a bad plot", "bad", "good",
           "the plot is good and bad", "quite apart"]
  side = {"the movie is good": "held", "the plot is good and bad": "train", "a bad plot": "held",
          "quite apart": "held"}
  sides = holdout.containment_sides(texts, lambda root: side[root])
  # "is good" and "good" are inside a held-out and a training root: training; "bad" too.
  assert sides == {"the movie is good": "held", "is good": "train", "good": "train",
                   "a bad plot": "held", "bad": "train", "the plot is good and bad": "train",
                   "quite apart": "held"}
  side["the plot is good and bad"] = "none"  # a selection split's root: not held out, not trained
  sides = holdout.containment_sides(texts, lambda root: side[root])
  assert sides["is good"] == "none" and sides["a bad plot"] == "held"
  with pytest.raises(ValueError, match="single-sentence tasks"):
    holdout.holdout_split([Example("a", "b", "0")] * 3, 0.5, group="containment")
  with pytest.raises(ValueError, match=r"data\.holdout_group='words'"):
    holdout.holdout_split([ex("a")], 0.5, group="words")
