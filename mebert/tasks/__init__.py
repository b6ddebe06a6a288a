"""Fine-tuning BERT encoders on labelled tasks.

  defaults.py   every config key (configs/finetune/*.py start from finetune_defaults())
  data.py       TSV/CSV/JSONL/CoNLL/TFDS readers with file:line errors, labels, held-out split
  batching.py   tokenization (pairs, word-aligned tags) and sort-free length-bucketed batches
  model.py      BertForTask: encoder + dropout + classifier, Hugging Face's parameter layout
  steps.py      the pure train/predict steps and their jitted, sharded, cached forms
  optim.py      AdamW recipe + layer-wise rate decay + reduce-on-plateau on dev values
  sources.py    init from a Hugging Face folder, a mebert workdir or random; the config as run
  finetune.py   the training loop: eval every N steps, early stopping, keep-best checkpoints
  inference.py  eval/predict from checkpoints, ensembles (mean probabilities), metrics of outputs
  metrics.py    numpy accuracy, F1, MCC, Pearson/Spearman, seqeval-compatible span F1
  seeds.py      python -m mebert.tasks.seeds: several seeds, mean +- std, and their ensemble
"""
