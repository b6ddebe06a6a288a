"""Fine-tuning data: readers (TSV quirks, CSV, JSONL, CoNLL), labels, held-out split, word-aligned
tags, truncation and length bucketing. Pure numpy and tokenizers: nothing compiles here."""

import json

import numpy as np
import pytest

from mebert.tasks import batching, data, holdout


def _task(tiny_config, kind="classification", **kw):
  c = tiny_config(kind)
  for k, v in kw.items():
    setattr(c.task, k, v)
  return c


def test_mrpc_tsv_with_bom_and_quotes(shared_data, tiny_config):
  c = _task(tiny_config, text_column="#1 String", text_pair_column="#2 String",
            label_column="Quality")
  examples = data.read_examples(str(shared_data / "mrpc" / "train.tsv"), c.task, c.data)
  assert len(examples) == 3668  # a quoting CSV reader would merge rows at the quotes
  first = examples[0]
  assert first.text.startswith('Amrozi accused his brother, whom he called "the witness"')
  assert first.pair.startswith('Referring to him as only "the witness"')
  assert (first.label, first.line) == ("1", 2)
  assert data.infer_labels(examples, "classification") == ["0", "1"]


def test_sst2_trailing_space_stripped_and_holdout_is_deterministic(shared_data, tiny_config):
  c = _task(tiny_config)
  examples = data.read_examples(str(shared_data / "sst2" / "train.tsv"), c.task, c.data, limit=3000)
  assert examples[0].text == "hide new secretions from the parental units"
  train, held = holdout.holdout_split(examples, 0.1)
  train2, held2 = holdout.holdout_split(list(reversed(examples)), 0.1)
  assert sorted(e.line for e in held) == sorted(e.line for e in held2)  # order-independent
  assert 0.05 < len(held) / len(examples) < 0.15
  assert not {e.text for e in train} & {e.text for e in held}  # repeated phrases on one side
  # A nested selection split (offset = the evaluation's fraction) never touches the evaluation's.
  sel_train, sel = holdout.holdout_split(examples, 0.1, offset=0.1)
  evaluation = {e.line for e in held}
  assert not evaluation & {e.line for e in sel_train + sel}
  assert len(sel_train) + len(sel) + len(held) == len(examples)
  assert {e.line for e in sel} < {e.line for e in train} and 0.05 < len(sel) / len(examples) < 0.15
  with pytest.raises(ValueError, match=r"data\.holdout_offset=0\.95"):
    holdout.holdout_split(examples, 0.1, offset=0.95)


def test_csv_jsonl_and_text_readers(tmp_path, tiny_config):
  c = _task(tiny_config, text_column="text", label_column="label")
  (tmp_path / "a.csv").write_text('text,label\n"hello, world",pos\nbye,neg\n')
  (tmp_path / "b.jsonl").write_text(json.dumps({"text": "hi", "label": 1}) + "\n\n"
                                    + json.dumps({"text": "yo", "label": 0}) + "\n")
  (tmp_path / "c.txt").write_text("one sentence\n\nanother one\n")
  csv_ex = data.read_examples(str(tmp_path / "a.csv"), c.task, c.data)
  assert [(e.text, e.label, e.line) for e in csv_ex] == [("hello, world", "pos", 2), ("bye", "neg", 3)]
  js = data.read_examples(str(tmp_path / "b.jsonl"), c.task, c.data)
  assert [(e.text, e.label, e.line) for e in js] == [("hi", 1, 1), ("yo", 0, 3)]
  text = data.read_examples(str(tmp_path / "c.txt"), c.task, c.data, labeled=False)
  assert [(e.text, e.line) for e in text] == [("one sentence", 1), ("another one", 3)]
  both = data.read_examples(f"{tmp_path}/a.csv,{tmp_path}/b.jsonl", c.task, c.data)
  assert len(both) == 4
  with pytest.raises(FileNotFoundError, match="nope.tsv"):
    data.read_examples(str(tmp_path / "nope.tsv"), c.task, c.data)
  with pytest.raises(data.DataError, match="no column 'missing'"):
    c.task.label_column = "missing"
    data.read_examples(str(tmp_path / "a.csv"), c.task, c.data)


def test_conll_reader(shared_data, tiny_config):
  c = tiny_config("token_classification")
  c.data.conll_tag_column = 3
  examples = data.read_examples(str(shared_data / "conll2003" / "train.txt"), c.task, c.data,
                                limit=50)
  assert examples[0].text == ["EU", "rejects", "German", "call", "to", "boycott", "British", "lamb", "."]
  assert examples[0].label == ["B-ORG", "O", "B-MISC", "O", "O", "O", "B-MISC", "O", "O"]
  assert examples[0].line == 3  # after -DOCSTART- and its blank line
  labels = data.infer_labels(examples, "token_classification")
  assert labels[0] == "O" and "B-PER" in labels


def test_unknown_label_names_label_file_and_line(tmp_path, tiny_config):
  c = _task(tiny_config)
  path = tmp_path / "dev.tsv"
  path.write_text("sentence\tlabel\ngood\t1\nfine\t0\nmeh\tneutral\n")
  examples = data.read_examples(str(path), c.task, c.data)
  with pytest.raises(data.DataError) as e:
    data.check_labels(examples, ["0", "1"], "classification")
  assert "'neutral'" in str(e.value) and str(path) in str(e.value) and "line 4" in str(e.value)
  conll = tmp_path / "dev.conll"
  conll.write_text("John B-PER\nsmiles O\n\nParis B-CITY\n")
  c = tiny_config("token_classification")
  tagged = data.read_examples(str(conll), c.task, c.data)
  with pytest.raises(data.DataError, match=r"dev.conll line 4: unknown label 'B-CITY'"):
    data.check_labels(tagged, ["O", "B-PER"], "token_classification")


def test_labels_natural_order_and_regression_values():
  ex = [data.Example("x", label=v) for v in ("10", "2", "1")]
  assert data.infer_labels(ex, "classification") == ["1", "2", "10"]
  with pytest.raises(data.DataError, match="not a number"):
    data.check_labels([data.Example("x", label="high", file="f", line=3)], [], "regression")


def test_first_piece_labels_word_ids_and_truncation(vocab_file, tiny_config):
  tok = batching.TaskTokenizer(vocab_file)
  words = ["Schwarzenegger", "visited", "Berlin", "yesterday"] + ["film"] * 40
  tags = ["B-PER", "O", "B-LOC", "O"] + ["O"] * 40
  ex = [data.Example(words, label=tags)]
  labels = ["O", "B-PER", "B-LOC"]
  enc = batching.encode_examples(ex, tok, "token_classification", labels, seq_len=32)
  ids, w, y = enc.input_ids[0], enc.word_ids[0], enc.labels[0]
  assert len(ids) == 32 and ids[0] == tok.cls_id and ids[-1] == tok.sep_id
  pieces_of_first = int(np.sum(w == 0))
  assert pieces_of_first > 1  # a word split into several pieces
  assert y[1] == labels.index("B-PER") and np.all(y[2:1 + pieces_of_first] == -1)
  assert y[0] == -1 and y[-1] == -1  # [CLS] and [SEP] are ignored
  assert np.sum(y >= 0) == len(set(w[w >= 0]))  # one label per surviving word
  assert w.max() < len(words) - 1  # the tail of the sentence was truncated away


def test_pairs_longest_first_and_type_ids(vocab_file):
  tok = batching.TaskTokenizer(vocab_file)
  ids, types, _ = tok.encode(["the film " * 30], ["a story"], max_length=32)
  assert len(ids[0]) == 32 and types[0][-1] == 1 and types[0][0] == 0
  assert sum(types[0]) == 3  # "a story [SEP]" kept whole: the longer side was cut


def test_buckets_and_train_batches():
  assert batching.bucket_lengths(128) == (16, 32, 64, 128)
  assert batching.bucket_lengths(100) == (16, 32, 64, 100)
  assert batching.bucket_lengths(128, (24, 64)) == (24, 64, 128)
  rng = np.random.default_rng(0)
  lengths = rng.integers(3, 129, 1000)
  buckets = batching.bucket_lengths(128)
  batches = batching.train_batches(lengths, buckets, 32, seed=0, epoch=0)
  rows = np.concatenate([r for r, _ in batches])
  assert sorted(rows[rows >= 0].tolist()) == list(range(1000))  # every example exactly once
  assert all(len(r) == 32 for r, _ in batches)
  assert {n for _, n in batches} <= set(buckets)
  for r, n in batches:
    real = r[r >= 0]
    assert lengths[real].max() <= n  # fits its bucket...
    smaller = [b for b in buckets if b < n]
    assert not smaller or lengths[real].max() > smaller[-1] or len(real) < 32  # ...the smallest one
  padded = sum(n * 32 for _, n in batches)
  assert padded < 1.5 * lengths.sum() and padded < 0.75 * 128 * 1000  # vs padding to seq_len
  again = batching.train_batches(lengths, buckets, 32, seed=0, epoch=0)
  assert all(np.array_equal(a, b) for (a, _), (b, _) in zip(batches, again))
  other = batching.train_batches(lengths, buckets, 32, seed=0, epoch=1)
  assert not np.array_equal(batches[0][0], other[0][0])
  assert batching.steps_per_epoch(lengths, buckets, 32) == len(batches)


def test_make_batch_pads_rows_and_weights(vocab_file):
  tok = batching.TaskTokenizer(vocab_file)
  ex = [data.Example("good film", label="1"), data.Example("bad", label="0")]
  enc = batching.encode_examples(ex, tok, "classification", ["0", "1"], 32)
  batch = batching.make_batch(enc, np.array([1, 0, -1, -1]), 16, "classification")
  assert batch["input_ids"].shape == (4, 16)
  np.testing.assert_array_equal(batch["weights"], [1, 1, 0, 0])
  np.testing.assert_array_equal(batch["labels"], [0, 1, 0, 0])
  assert batch["segment_ids"][1].sum() == enc.lengths[0] and batch["segment_ids"][2].sum() == 0
