"""BERT-base pretraining with the published recipe: Devlin et al. 2019 (arXiv:1810.04805v2),
appendix A.2, as google-research/bert released it in October 2018.

One run of 1,000,000 steps of 256 sequences: Adam, lr 1e-4, beta1 0.9, beta2 0.999, L2 weight
decay 0.01 (not on LayerNorm or biases), 10,000 warmup steps then linear decay to 0 at step 1M,
dropout 0.1, masked LM (15% of tokens, 80/10/10) plus next-sentence prediction. "To speed up
pretraining, we pre-train the model with sequence length of 128 for 90% of the steps. Then, we
train the rest 10% of the steps of sequence of 512 to learn the positional embeddings": one
optimizer and one learning-rate schedule across both lengths. Here that is two runs of one
schedule, each in its own workdir:

  :phase1  steps 0-900k at 128 tokens (20 predictions each), the schedule spanning 1M steps
           (train.schedule_steps), so it ends at 10% of the peak rate, not at 0;
  :phase2  steps 900k-1M at 512 tokens (80 predictions), continuing phase 1's parameters, Adam
           moments and step (init.continue_from, required) on a fresh 512-token data stream.

Masking is by WordPiece token, as in the 2018 recipe and its released models; whole-word masking
(google-research/bert's May 2019 models) is a choice: --config.data.whole_word_masking=True.
On a TPU VM (see launch/tpu_vm.sh), both phases with the same vocabulary:

  python -m mebert.train --config=configs/pretrain/bert_base.py:phase1 --workdir=gs://BUCKET/base-p1 \
      --config.data.corpus=tfds:wikipedia/20230601.en --config.data.vocab=PATH/vocab.txt
  python -m mebert.train --config=configs/pretrain/bert_base.py:phase2 --workdir=gs://BUCKET/base-p2 \
      --config.init.continue_from=gs://BUCKET/base-p1 \
      --config.data.corpus=tfds:wikipedia/20230601.en --config.data.vocab=PATH/vocab.txt
"""

from ml_collections import config_dict

from mebert.model.config import bert_size
from mebert.train.defaults import model_defaults, pretrain_defaults

TOTAL_STEPS, PHASE1_STEPS = 1_000_000, 900_000


def recipe(size: str, arg: str | None):
  phase = arg or "phase1"
  if phase not in ("phase1", "phase2"):
    raise ValueError(f"config argument {phase!r}: expected phase1 or phase2")
  c = pretrain_defaults()
  # "auto": bfloat16 compute on TPU and GPU (float32 on CPU), decided from the mesh's devices
  # when the trainer is built; parameters and optimizer moments stay float32 (master weights).
  # Attention: "auto" picks splash (TPU) or cuDNN (GPU) only without attention dropout, and the
  # recipe keeps BERT's 0.1, so it is XLA's attention here: at 128 tokens attention is ~3% of the
  # FLOPs, and dropping its dropout would change the recipe being reproduced. To trade it for the
  # fused kernel: --config.model.attention_dropout_rate=0 (docs/tpu.md).
  c.model = model_defaults(**bert_size(size), vocab_size=30522, dtype="auto")
  c.data.vocab_size = 30522
  c.data.whole_word_masking = False  # the 2018 recipe masks WordPiece tokens
  c.train.batch_size = 256
  c.train.learning_rate = 1e-4
  c.train.warmup_steps = 10_000
  if phase == "phase1":
    c.data.seq_len, c.data.max_predictions_per_seq = 128, 20
    c.train.num_steps, c.train.schedule_steps = PHASE1_STEPS, TOTAL_STEPS
  else:
    c.data.seq_len, c.data.max_predictions_per_seq = 512, 80
    c.train.num_steps = TOTAL_STEPS
    c.init.continue_from = config_dict.placeholder(str)  # phase 1's workdir
  c.checkpoint.every_steps = 5_000
  c.eval.every_steps = 5_000
  return c


def get_config(arg=None):
  return recipe("base", arg)
