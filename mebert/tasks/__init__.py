"""Fine-tuning BERT encoders on labelled tasks.

  defaults.py   every config key (configs/finetune/*.py start from finetune_defaults())
  data.py       TSV/CSV/JSONL/CoNLL/TFDS readers (local or gs://) with file:line errors, labels
  holdout.py    deterministic held-out splits: by text, or by the sentences containing it (SST-2)
  glue.py       the nine GLUE tasks: folders or TFDS, columns, labels, metrics, submission files
  prepare_tfds.py  python -m mebert.tasks.prepare_tfds glue/sst2: TFDS as array_record, no TF
  run_config.py the config eval/predict run with: the workdir's saved one, data/runtime overrides
  batching.py   tokenization (pairs, word-aligned tags) and sort-free length-bucketed batches
  model.py      BertForTask: encoder + dropout + classifier, Hugging Face's parameter layout
  steps.py      the pure train/predict steps and their jitted, sharded, cached forms
  optim.py      AdamW recipe + layer-wise rate decay + reduce-on-plateau on dev values
  sources.py    init from a Hugging Face folder, a mebert workdir or random; the config as run
  finetune.py   the training loop: eval every N steps, early stopping, keep-best checkpoints
  inference.py  eval/predict from checkpoints, ensembles (mean probabilities), metrics of outputs
  metrics.py    accuracy, F1, MCC (scikit-learn), Pearson/Spearman (scipy), span F1 (seqeval)
  seeds.py      python -m mebert.tasks.seeds: several seeds, mean +- std, and their ensemble
"""
