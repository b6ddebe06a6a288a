"""The pretraining objective a run uses (`config.train.objective`): its models and pure steps.

  "mlm"      BertForPreTraining: masked LM, plus NSP/SOP for the BERT family when data.next_sentence
             asks (RoBERTa and ModernBERT have no NSP head and need data.next_sentence="none").
  "electra"  ElectraForPreTraining: generator MLM + replaced-token detection (config.electra:
             mebert.model.electra.ElectraConfig); the discriminator is model.*.

The trainer's Experiment binds model, optimizer and schedule into these and jits them once.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import flax.linen as nn

from mebert.model.config import ModelConfig
from mebert.model.electra import ElectraConfig, ElectraForPreTraining
from mebert.model.pretraining import BertForPreTraining
from mebert.train import electra_steps, steps

OBJECTIVES = ("mlm", "electra")


@dataclasses.dataclass(frozen=True)
class Objective:
  name: str
  train_model: nn.Module
  eval_model: nn.Module
  init_state: Callable  # (rng, *, model, tx, example_batch) -> TrainState (boxed)
  train_step: Callable  # (state, batch, *, model, tx, schedule, seed, grad_accum_steps)
  eval_step: Callable  # (params, batch, *, model) -> metric sums


def from_config(config, model_config: ModelConfig) -> Objective:
  """The objective `config.train.objective` names, after checking the data fit it."""
  name = str(config.train.get("objective", "mlm"))
  if name not in OBJECTIVES:
    raise ValueError(f"train.objective={name!r} is not one of {OBJECTIVES}")
  next_sentence = str(config.data.get("next_sentence", "nsp"))
  if next_sentence != "none" and (name == "electra" or model_config.family != "bert"):
    who = "train.objective='electra'" if name == "electra" else f"model.family={model_config.family!r}"
    raise ValueError(f"data.next_sentence={next_sentence!r} but {who} has no next-sentence head; "
                     "set data.next_sentence='none'")
  if name == "mlm":
    return Objective(name, BertForPreTraining(model_config, deterministic=False),
                     BertForPreTraining(model_config, deterministic=True), steps.init_train_state,
                     steps.train_step, steps.eval_step)
  electra = ElectraConfig.from_dict(config.get("electra") or {})
  return Objective(
      name, ElectraForPreTraining(model_config, electra, deterministic=False),
      ElectraForPreTraining(model_config, electra, deterministic=True),
      electra_steps.init_train_state,
      functools.partial(electra_steps.train_step, electra=electra),
      functools.partial(electra_steps.eval_step, electra=electra))
