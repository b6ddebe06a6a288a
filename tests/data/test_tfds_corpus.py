"""The local TFDS builder: text folder -> array_record -> documents and examples, without TensorFlow."""

import json
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from mebert.data import corpora, pipeline, tfds_corpus

DOC = "Sentence {i} of document {d} in file {f}. It is followed by another one! And a third?"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  raw = tmp_path_factory.mktemp("raw")
  for f in range(3):
    docs = ["\n".join(DOC.format(i=i, d=d, f=f) for i in range(4)) for d in range(5)]
    (raw / f"part{f}.txt").write_text("\n\n".join(docs), encoding="utf-8")
  (raw / "sub").mkdir()
  (raw / "sub" / "latin1.txt").write_bytes("Caf\xe9 au lait. Cr\xe8me br\xfbl\xe9e.\r\n".encode("latin-1"))
  out = tmp_path_factory.mktemp("tfds")
  spec = tfds_corpus.prepare_text_folder(str(raw), str(out))
  return spec, str(out)


def test_round_trip_without_tensorflow(prepared):
  spec, data_dir = prepared
  assert spec == "tfds:mebert_text_corpus/blank_lines"
  source = tfds.data_source("mebert_text_corpus/blank_lines", split="train", data_dir=data_dir, download=False)
  texts = sorted(source[i]["text"].decode() for i in range(len(source)))
  assert len(texts) == 16
  assert "Caf\u00e9 au lait. Cr\u00e8me br\u00fbl\u00e9e." in texts  # Latin-1 fallback, CRLF gone
  assert "\n".join(DOC.format(i=i, d=0, f=0) for i in range(4)) in texts  # one document per blank-line block
  assert "tensorflow" not in sys.modules


def test_corpus_spec_reads_the_dataset_lazily(prepared):
  spec, data_dir = prepared
  c = corpora.load_corpus(spec, tfds_data_dir=data_dir)
  assert not c.in_memory and len(c.documents) == 16
  assert sorted(c.documents[i] for i in range(16)) == sorted(
      ["\n".join(DOC.format(i=i, d=d, f=f) for i in range(4)) for f in range(3) for d in range(5)]
      + ["Caf\u00e9 au lait. Cr\u00e8me br\u00fbl\u00e9e."])
  assert "tensorflow" not in sys.modules


def test_pretraining_stream_from_the_lazy_corpus(prepared, data_config, spm_tok):
  spec, data_dir = prepared
  data_config.corpus = spec
  data_config.tfds_data_dir = data_dir
  data_config.seq_len = 16  # a few chunks per document, so example slots matter
  data_config.max_predictions_per_seq = 3
  data_config.min_eval_docs = 2
  maker = pipeline.make_example_maker(data_config, spm_tok, split="train", seed=0)
  assert maker.store.slots > 1 and len(maker) == maker.store.num_docs * maker.store.slots
  it = pipeline.make_pretraining_iterator(data_config, spm_tok, split="train", batch_size=4, seed=0)
  batches = [next(it) for _ in range(3)]
  state = it.get_state()
  expected = next(it)
  it.set_state(state)
  assert np.array_equal(next(it)["input_ids"], expected["input_ids"])
  labels = np.concatenate([b["next_sentence_labels"].ravel() for b in batches])  # packed: [B, S]
  assert set(labels.tolist()) <= {-1, 0, 1} and (labels >= 0).any()
  for b in batches:  # every example's [CLS] where its slot says
    rows, slots = np.nonzero(b["next_sentence_labels"] >= 0)
    assert (b["input_ids"][rows, b["cls_positions"][rows, slots]] == spm_tok.cls_id).all()
  ev = pipeline.make_pretraining_iterator(data_config, spm_tok, split="eval", batch_size=1, seed=0)
  assert len(list(ev)) >= 2
  assert "tensorflow" not in sys.modules


def test_cli_and_binary_file_error(tmp_path, capsys):
  raw = tmp_path / "raw"
  raw.mkdir()
  (raw / "a.txt").write_text("One document.\n")
  tfds_corpus.main([f"--input={raw}", f"--data_dir={tmp_path / 'out'}", "--one_doc_per_file"])
  assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["corpus"] == "tfds:mebert_text_corpus/files"
  (raw / "b.bin").write_bytes(b"\x00\x01\x02" * 100)
  with pytest.raises(ValueError, match="b.bin"):
    tfds_corpus.prepare_text_folder(str(raw), str(tmp_path / "out2"))
