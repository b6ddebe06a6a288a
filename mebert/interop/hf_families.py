"""The Hugging Face families mebert converts: their classes, key tables and config keys.

mebert keeps every family's encoder under "bert" and its heads under "cls" (masked LM), "classifier"
(task heads) and "discriminator_predictions" (ELECTRA's replaced-token head), so fine-tuning,
distillation and export read one layout. What differs per family:

  family      HF base (prefix)          heads                               config.json
  ----------  ------------------------  ----------------------------------  -------------
  bert        BertModel (bert.)         cls.predictions, cls.seq_relationship, classifier   bert
  roberta     RobertaModel (roberta.)   lm_head; classifier.{dense,out_proj}  roberta, xlm-roberta
  electra     ElectraModel (electra.)   discriminator_predictions; generator_*; classifier  electra
  modernbert  ModernBertModel (model.)  head + decoder.bias; head + classifier  modernbert

XLM-R is RoBERTa with a sentencepiece vocabulary: it imports through the same table (its classes
load the folder in the parity gate) and exports as RoBERTa.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterator

from mebert.interop import hf_config, hf_names
from mebert.interop.errors import InteropError
from mebert.interop.hf_names import Entry, bert_encoder, dense, layer_norm
from mebert.model.config import ModelConfig

ROLES = ("base", "pretraining", "mlm", "classification", "token_classification")


@dataclasses.dataclass(frozen=True)
class Family:
  name: str  # ModelConfig.family
  title: str  # for messages: "BERT", "RoBERTa", ...
  model_types: tuple[str, ...]  # config.json model_type values; the first is written on export
  prefix: str  # the base model's attribute in the task models
  classes: dict[str, str]  # role -> transformers class (see ROLES)
  entries: Callable[[ModelConfig, int | None, str | None], Iterator[Entry]]
  # (HF key, mebert path): tensors HF stores tied to another (the MLM decoder), checked on import.
  tied: tuple[tuple[str, tuple[str, ...]], ...]
  kwargs_from_hf: Callable[[dict, str], dict]
  config_to_hf: Callable[[ModelConfig], dict]
  refusals: Callable[[ModelConfig], list[tuple[str, bool, str]]]
  # mebert parameters with no HF tensor (ModernBERT's unused layer-0 attention norm): path -> fill.
  extra_params: Callable[[ModelConfig], dict] = lambda cfg: {}

  def role_of(self, architecture: str) -> str:
    """The role of a transformers class name of this family (XLM-R's included)."""
    for role, cls in self.classes.items():
      if architecture in (cls, cls.replace("Roberta", "XLMRoberta")):
        return role
    raise InteropError(f"architecture {architecture!r} is not one of {sorted(self.classes.values())}")

  def groups(self, role: str, has_pooler: bool) -> list[str]:
    """The parameter groups a model of `role` holds (has_pooler: the params carry bert/pooler)."""
    groups = ["embeddings", "layer"]
    pooled = self.name == "bert" and role in ("base", "pretraining", "classification")
    if pooled or (self.name == "roberta" and role == "base" and has_pooler):
      groups.append("pooler")
    groups += {"pretraining": ["mlm", "nsp"] if self.name == "bert" else ["rtd"],
               "mlm": ["mlm"], "classification": ["classifier"],
               "token_classification": ["classifier"]}.get(role, [])
    return groups


def task_kind_of(role: str) -> str | None:
  return role if role in ("classification", "token_classification") else None


def _classifier(num_labels, task_kind, h, sequence_head: bool) -> Iterator[Entry]:
  """BERT: one Dense; RoBERTa/ELECTRA's sequence head: classifier.{dense,out_proj}."""
  if num_labels is None:
    return
  if sequence_head and task_kind != "token_classification":
    yield from dense(("classifier", "dense"), "classifier.dense", "classifier", (h, h))
    yield from dense(("classifier", "out_proj"), "classifier.out_proj", "classifier",
                     (h, num_labels))
  else:
    yield from dense(("classifier",), "classifier", "classifier", (h, num_labels))


def _roberta_entries(cfg, num_labels, task_kind):
  h, e = cfg.hidden_size, cfg.embedding_width
  yield from bert_encoder(cfg, "roberta")
  yield from dense(("bert", "pooler", "dense"), "roberta.pooler.dense", "pooler", (h, h))
  yield Entry(("cls", "predictions", "bias"), "lm_head.bias", False, "mlm", (cfg.vocab_size,))
  yield from dense(("cls", "predictions", "transform", "dense"), "lm_head.dense", "mlm", (h, e))
  yield from layer_norm(("cls", "predictions", "transform", "LayerNorm"), "lm_head.layer_norm",
                        "mlm", e)
  yield from _classifier(num_labels, task_kind, h, sequence_head=True)


def _electra_entries(cfg, num_labels, task_kind):
  h, e = cfg.hidden_size, cfg.embedding_width
  yield from bert_encoder(cfg, "electra")
  yield from dense(("discriminator_predictions", "dense"), "discriminator_predictions.dense",
                   "rtd", (h, h))
  yield from dense(("discriminator_predictions", "dense_prediction"),
                   "discriminator_predictions.dense_prediction", "rtd", (h, 1))
  # ElectraForMaskedLM (a generator as Google released them): its MLM head.
  yield Entry(("cls", "predictions", "bias"), "generator_lm_head.bias", False, "mlm",
              (cfg.vocab_size,))
  yield from dense(("cls", "predictions", "transform", "dense"), "generator_predictions.dense",
                   "mlm", (h, e))
  yield from layer_norm(("cls", "predictions", "transform", "LayerNorm"),
                        "generator_predictions.LayerNorm", "mlm", e)
  yield from _classifier(num_labels, task_kind, h, sequence_head=True)


def _bert_kwargs(hf, path):
  return dict(hf_config.bert_like_kwargs(hf, path, "bert"), family="bert")


def _roberta_kwargs(hf, path):
  kwargs = hf_config.bert_like_kwargs(hf, path, hf.get("model_type", "roberta"))
  # fairseq's make_positions: real tokens are numbered from padding_idx + 1.
  return dict(kwargs, family="roberta", position_offset=int(kwargs["pad_token_id"]) + 1)


def _electra_kwargs(hf, path):
  kwargs = hf_config.bert_like_kwargs(hf, path, "electra")
  embedding = int(hf.get("embedding_size", kwargs["hidden_size"]))
  return dict(kwargs, family="electra",
              embedding_size=0 if embedding == kwargs["hidden_size"] else embedding)


def _refusals(family: str):
  def refusals(cfg: ModelConfig):
    out = hf_config.bert_like_refusals(cfg)
    if family == "roberta":
      out.append(("position_offset", cfg.position_offset != cfg.pad_token_id + 1,
                  f"pad_token_id + 1 = {cfg.pad_token_id + 1}"))
    else:
      out.append(("position_offset", cfg.position_offset != 0, "0"))
    if family != "electra":
      out.append(("embedding_size", cfg.embedding_width != cfg.hidden_size,
                  f"0 or hidden_size={cfg.hidden_size}"))
    return out

  return refusals


def _config_to_hf(family: str):
  def config_to_hf(cfg: ModelConfig) -> dict:
    out = hf_config.bert_like_config(cfg)
    if family == "electra":
      out["embedding_size"] = cfg.embedding_width
    if family == "roberta":  # RobertaConfig's own defaults; the forward pass reads neither
      out.update(bos_token_id=0, eos_token_id=2)
    return out

  return config_to_hf


def _classes(stem: str, pretraining: bool) -> dict[str, str]:
  out = {"base": f"{stem}Model", "mlm": f"{stem}ForMaskedLM",
         "classification": f"{stem}ForSequenceClassification",
         "token_classification": f"{stem}ForTokenClassification"}
  if pretraining:
    out["pretraining"] = f"{stem}ForPreTraining"
  return out


def _modernbert() -> Family:
  from mebert.interop import hf_modernbert

  return Family(
      name="modernbert", title="ModernBERT", model_types=("modernbert",), prefix="model",
      classes=_classes("ModernBert", pretraining=False), entries=hf_modernbert.entries,
      tied=(("decoder.weight", ("bert", "embeddings", "word_embeddings", "embedding")),),
      kwargs_from_hf=hf_modernbert.kwargs_from_hf, config_to_hf=hf_modernbert.config_to_hf,
      refusals=hf_modernbert.refusals, extra_params=hf_modernbert.extra_params)


WORD = ("bert", "embeddings", "word_embeddings", "embedding")
MLM_BIAS = ("cls", "predictions", "bias")
_FAMILIES = {
    "bert": Family(
        name="bert", title="BERT", model_types=("bert",), prefix="bert",
        classes=_classes("Bert", pretraining=True), entries=hf_names.bert_entries,
        tied=((hf_names.TIED_DECODER_WEIGHT, WORD), (hf_names.TIED_DECODER_BIAS, MLM_BIAS)),
        kwargs_from_hf=_bert_kwargs, config_to_hf=_config_to_hf("bert"),
        refusals=_refusals("bert")),
    "roberta": Family(
        name="roberta", title="RoBERTa", model_types=("roberta", "xlm-roberta"), prefix="roberta",
        classes=_classes("Roberta", pretraining=False), entries=_roberta_entries,
        tied=(("lm_head.decoder.weight", WORD), ("lm_head.decoder.bias", MLM_BIAS)),
        kwargs_from_hf=_roberta_kwargs, config_to_hf=_config_to_hf("roberta"),
        refusals=_refusals("roberta")),
    "electra": Family(
        name="electra", title="ELECTRA", model_types=("electra",), prefix="electra",
        classes=_classes("Electra", pretraining=True), entries=_electra_entries,
        tied=(("generator_lm_head.weight", WORD),),
        kwargs_from_hf=_electra_kwargs, config_to_hf=_config_to_hf("electra"),
        refusals=_refusals("electra")),
}


def family(name: str) -> Family:
  if name == "modernbert":
    return _modernbert()
  return _FAMILIES[name]


def for_model_type(model_type: str, path: str = "config.json") -> Family:
  for name in ("bert", "roberta", "electra", "modernbert"):
    if model_type in family(name).model_types:
      return family(name)
  raise InteropError(f"{path}: model_type={model_type!r}; supported: 'bert', 'roberta', "
                     "'xlm-roberta', 'electra', 'modernbert'")
