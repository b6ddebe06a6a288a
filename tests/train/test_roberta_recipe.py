"""configs/pretrain/roberta_base.py:tiny trains on RoBERTa's FULL-SENTENCES rows
(data.cross_document), shrunk to a 1-layer model for the test."""

import importlib.util

import numpy as np
from tiny_run import REPO, read_losses


def _tiny_roberta():
  spec = importlib.util.spec_from_file_location("roberta_base", REPO / "configs/pretrain/roberta_base.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config("tiny")
  c.model.hidden_size, c.model.num_layers, c.model.num_heads = 32, 1, 2
  c.model.intermediate_size, c.model.max_position_embeddings = 64, 65  # positions from pad + 1
  c.data.vocab_size, c.data.seq_len, c.data.max_predictions_per_seq = 400, 64, 10
  c.train.batch_size, c.train.num_steps, c.train.warmup_steps, c.train.log_every = 8, 4, 1, 1
  c.checkpoint.every_steps = c.eval.every_steps = 4
  c.eval.num_batches, c.eval.batch_size = 2, 8
  return c


def test_tiny_recipe_trains_on_spans_that_cross_documents(tmp_path):
  from mebert.train import trainer

  c = _tiny_roberta()
  assert c.data.cross_document and not c.data.pack and c.data.next_sentence == "none"
  experiment = trainer.Experiment(c, str(tmp_path))
  tok = experiment.tokenizer
  it = experiment.data_iterator("train")
  # A span crosses a document boundary only where a document's end leaves room: at 62 tokens a
  # row about 1 row in 80 here (10 of the first 800 with jax 0.12, more with 0.10; the vocabulary,
  # hence the spans, differ slightly between the two stacks).
  batches = [next(it) for _ in range(100)]
  for b in batches:  # one attention segment per row, [CLS] first, no sentence task
    assert set(np.unique(b["segment_ids"]).tolist()) <= {0, 1} and "cls_positions" not in b
    assert (b["input_ids"][:, 0] == tok.cls_id).all() and (b["next_sentence_labels"] == -1).all()
  # A [SEP] before a row's last real token separates two documents in one span.
  ids = np.concatenate([b["input_ids"] for b in batches])
  last = np.concatenate([b["segment_ids"] for b in batches]).sum(1) - 1
  inner = [(row[1:end] == tok.sep_id).any() for row, end in zip(ids, last)]
  assert 1 <= sum(inner) < len(inner) / 20
  final = trainer.train_and_evaluate(c, str(tmp_path))
  losses = read_losses(tmp_path)
  assert sorted(losses) == [1, 2, 3, 4] and all(np.isfinite(list(losses.values())))
  assert np.isfinite(final["mlm_loss"]) and "nsp_accuracy" not in final
