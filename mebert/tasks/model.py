"""Task heads on the encoder, with Hugging Face's parameter layout: {"bert": <BertModel>,
"classifier": {"kernel" [H, C], "bias" [C]}} as BertForSequenceClassification /
BertForTokenClassification, so mebert.interop exports a fine-tuned workdir as either.

Sequence tasks read the pooled [CLS] vector (tanh pooler), token tasks every position; dropout sits
before the classifier. Regression is a sequence head with one output. Logits come back in float32.
The other families (model.family) carry their own heads under "classifier", with their Hugging Face
layouts (mebert.model.heads): RoBERTa's and ELECTRA's dense+out_proj on the first token,
ModernBERT's dense+gelu+LayerNorm before the output layer.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from mebert.model.config import ModelConfig
from mebert.model.encoder import BertModel
from mebert.model.heads import FamilyClassifierHead


class BertForTask(nn.Module):
  """Logits [B, C] (sequence tasks) or [B, L, C] (token_classification). Packed rows (see
  tasks.batching) pass positions and cls_positions [B, S]: sequence logits are then [B, S, C]."""

  config: ModelConfig
  kind: str
  num_outputs: int
  classifier_dropout: float = -1.0  # < 0: config.dropout_rate, as Hugging Face does
  deterministic: bool = True

  @nn.compact
  def __call__(self, input_ids, token_type_ids=None, segment_ids=None, positions=None,
               cls_positions=None):
    cfg = self.config
    token_task = self.kind == "token_classification"
    rate = cfg.dropout_rate if self.classifier_dropout < 0 else self.classifier_dropout
    if cfg.family != "bert":
      if segment_ids is None:
        segment_ids = (input_ids != cfg.pad_token_id).astype(jnp.int32)
      mean = cfg.classifier_pooling == "mean" and not token_task
      out = BertModel(cfg, self.deterministic, add_pooling_layer=False, name="bert")(
          input_ids, token_type_ids, segment_ids, positions=positions, cls_positions=cls_positions,
          pooled_only=not token_task and not mean)
      return FamilyClassifierHead(cfg, self.kind, self.num_outputs, rate, self.deterministic,
                                  name="classifier")(out, segment_ids, cls_positions)
    out = BertModel(cfg, self.deterministic, name="bert")(
        input_ids, token_type_ids, segment_ids, positions=positions, cls_positions=cls_positions,
        pooled_only=not token_task)
    x = out.sequence_output if token_task else out.pooled_output
    x = nn.Dropout(rate, deterministic=self.deterministic)(x)
    logits = nn.Dense(
        self.num_outputs, dtype=cfg.compute_dtype, param_dtype=cfg.storage_dtype,
        name="classifier",
        kernel_init=nn.with_logical_partitioning(
            nn.initializers.normal(cfg.initializer_range), ("embed", "classes")),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("classes",)))(x)
    return logits.astype(jnp.float32)


def num_outputs(kind: str, labels) -> int:
  return 1 if kind == "regression" else len(labels)
