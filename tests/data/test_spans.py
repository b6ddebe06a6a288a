"""RoBERTa's FULL-SENTENCES inputs (data.cross_document): spans across documents, with a [SEP]
between them, no held-out document in a training span, every training token in exactly one span
per epoch, dynamic masking, exact resume and process sharding."""

import re

import numpy as np
import pytest

from mebert.data import corpora, docstore, pipeline, spans

# Numbers spelled in letters a-j (17 -> "bh"): a small vocabulary may lack a rare digit.
SENTENCE = re.compile(r"sentence ([a-j]+) of document ([a-j]+)", re.IGNORECASE)


def _spell(n: int) -> str:
  return "".join(chr(ord("a") + int(c)) for c in str(n))


def _number(spelled: str) -> int:
  return int("".join(str(ord(c) - ord("a")) for c in spelled.lower()))


@pytest.fixture
def fullsent_config(data_config, tmp_path):
  """A corpus whose every sentence names itself: 48 documents of 1-6 sentences and a long one."""
  counts = [(7 * d) % 6 + 1 for d in range(48)] + [30]
  docs = ["\n".join(f"Sentence {_spell(i)} of document {_spell(d)}." for i in range(n))
          for d, n in enumerate(counts)]
  (tmp_path / "named.txt").write_text("\n\n".join(docs) + "\n")
  data_config.corpus = str(tmp_path / "named.txt")
  data_config.eval_fraction, data_config.min_eval_docs = 0.1, 6
  data_config.seq_len, data_config.max_predictions_per_seq = 32, 5
  data_config.next_sentence, data_config.short_seq_prob = "none", 0.0
  data_config.cross_document, data_config.pack = True, False
  return data_config


def _original(ex) -> np.ndarray:
  """The example's ids before masking, without padding."""
  ids = ex["input_ids"].copy()
  real = ex["masked_lm_weights"] > 0
  ids[ex["masked_lm_positions"][real]] = ex["masked_lm_ids"][real]
  return ids[:int(ex["segment_ids"].sum())]


def _documents_of(text: str) -> list[list[tuple[int, int]]]:
  """(document, sentence) of each sentence in each [SEP]-separated piece of a decoded span."""
  return [[(_number(d), _number(i)) for i, d in SENTENCE.findall(piece)]
          for piece in text.split("[SEP]")]


def _doc_tokens(tok, text: str) -> list[int]:
  return [t for ids in tok.encode_batch(corpora.split_sentences(text)) for t in ids]


def test_span_starts_is_the_greedy_fit_of_whole_sentences():
  rng = np.random.default_rng(0)
  lengths = rng.integers(1, 21, 500)
  doc_start = rng.random(500) < 0.2
  starts = spans.span_starts(lengths, doc_start, 20)
  assert starts[0] == 0 and starts[-1] == 500 and np.all(np.diff(starts) > 0)

  def cost(s, e):  # tokens of sentences [s, e), with a [SEP] before each document they open but s
    return int(lengths[s:e].sum() + doc_start[s + 1:e].sum())

  for s, e in zip(starts[:-1], starts[1:]):
    assert cost(s, e) <= 20  # fits...
    assert e == 500 or cost(s, e + 1) > 20  # ...and the next sentence would not have
  with pytest.raises(ValueError, match="a sentence of 21 tokens exceeds the span of 20"):
    spans.span_starts([3, 21], [True, False], 20)


def test_spans_cross_documents_with_a_separator_and_cover_each_token_once(fullsent_config, spm_tok):
  maker = pipeline.make_example_maker(fullsent_config, spm_tok, split="train", seed=0)
  corpus, train_ids = corpora.corpus_split(fullsent_config, "train")
  # The expected stream, tokenized here independently of the doc store: the train documents in
  # corpus order; `bounds` are where each document after the first begins.
  doc_tokens = [_doc_tokens(spm_tok, corpus.documents[d]) for d in train_ids]
  stream = np.concatenate(doc_tokens)
  bounds = set(np.cumsum([len(t) for t in doc_tokens])[:-1].tolist())
  covered, crossing, at = [], 0, 0
  for i in range(len(maker)):
    ex = maker(0, i)
    ids = _original(ex)
    assert len(ids) <= 32 and ids[0] == spm_tok.cls_id and ids[-1] == spm_tok.sep_id
    assert (ex["segment_ids"][:len(ids)] == 1).all() and not ex["token_type_ids"].any()
    assert ex["next_sentence_labels"] == -1  # no sentence task
    body = ids[1:-1]
    inner = np.flatnonzero(body == spm_tok.sep_id)
    text = body[body != spm_tok.sep_id]
    # Every inner [SEP] sits exactly where a document ends inside the span, and only there.
    starts_inside = {b - at for b in bounds if at < b < at + len(text)}
    assert set((inner - np.arange(len(inner))).tolist()) == starts_inside
    crossing += bool(len(inner))
    covered.append(text)
    at += len(text)
    sep_or_cls = np.isin(ids, [spm_tok.sep_id, spm_tok.cls_id])
    assert not sep_or_cls[ex["masked_lm_positions"][ex["masked_lm_weights"] > 0]].any()
  assert np.array_equal(np.concatenate(covered), stream)  # every token once, in stream order
  assert crossing >= 15  # of 87 spans: the short documents make many cross
  assert maker.spans.stats["spans_crossing_documents"] == crossing


def test_no_held_out_document_in_a_training_span(fullsent_config, spm_tok):
  corpus, eval_ids = corpora.corpus_split(fullsent_config, "eval")
  _, train_ids = corpora.corpus_split(fullsent_config, "train")
  number = lambda d: _number(SENTENCE.search(corpus.documents[d]).group(2))
  held_out, trained = {number(d) for d in eval_ids}, [number(d) for d in train_ids]
  assert len(held_out) >= 6
  seen = {}
  for split in ("train", "eval"):
    maker = pipeline.make_example_maker(fullsent_config, spm_tok, split=split, seed=0)
    order = []  # the documents in the order the spans run through them
    for i in range(len(maker)):
      for piece in _documents_of(spm_tok.decode(_original(maker(0, i))[1:-1])):
        docs = {d for d, _ in piece}
        assert len(docs) == 1  # a [SEP] between every two documents
        if not order or order[-1] != min(docs):
          order.append(min(docs))
    seen[split] = order
  assert not set(seen["train"]) & held_out
  assert seen["train"] == trained  # the training documents in corpus order, each once
  assert sorted(seen["eval"]) == sorted(held_out)

def test_masks_change_between_epochs_and_the_spans_do_not(fullsent_config, spm_tok):
  maker = pipeline.make_example_maker(fullsent_config, spm_tok, split="train", seed=0)
  first = [maker(0, i) for i in range(20)]
  second = [maker(1, i) for i in range(20)]
  assert all(np.array_equal(_original(a), _original(b)) for a, b in zip(first, second))
  assert sum(not np.array_equal(a["masked_lm_positions"], b["masked_lm_positions"])
             for a, b in zip(first, second)) >= 15
  again = pipeline.make_example_maker(fullsent_config, spm_tok, split="train", seed=0)
  assert all(np.array_equal(again(0, i)["input_ids"], first[i]["input_ids"]) for i in range(20))


@pytest.mark.parametrize("pack", [False, True], ids=["unpacked", "packed"])
def test_the_stream_resumes_exactly_and_shards_over_processes(fullsent_config, spm_tok, pack):
  fullsent_config.pack = pack
  make = lambda **kw: pipeline.make_pretraining_iterator(fullsent_config, spm_tok, split="train",
                                                         seed=3, **kw)
  it = make(batch_size=4)
  for _ in range(3):
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(3)]
  fresh = make(batch_size=4)
  fresh.set_state(state)
  for want, got in zip(expected, [next(fresh) for _ in range(3)]):
    assert all(np.array_equal(want[k], got[k]) for k in want)
  single = make(batch_size=4)
  shards = [make(batch_size=2, process_index=p, process_count=2) for p in range(2)]
  for _ in range(2):
    whole, parts = next(single), [next(s) for s in shards]
    ids = lambda b: sorted(b["example_ids"][b["example_ids"] >= 0].tolist())
    assert sorted(ids(parts[0]) + ids(parts[1])) == ids(whole) and not set(ids(parts[0])) & set(ids(parts[1]))


def test_lazy_spans_cross_documents_within_groups(fullsent_config, spm_tok):
  corpus, train_ids = corpora.corpus_split(fullsent_config, "train")
  store = docstore.LazyDocStore(corpus.documents, train_ids, spm_tok, 30)
  index = spans.build_spans(store, spm_tok.sep_id, 30)
  assert isinstance(index, spans.LazySpans) and index.group_docs > 1
  number = lambda d: _number(SENTENCE.search(corpus.documents[d]).group(2))
  groups = [[number(d) for d in train_ids[g * index.group_docs:(g + 1) * index.group_docs]]
            for g in range(index.num_groups)]
  seen = [set() for _ in groups]
  crossing = 0
  for epoch in range(6):
    for i in range(index.num_examples):
      span = index.span(i, np.random.default_rng([0, epoch, i]))
      assert len(span) <= 30
      pieces = _documents_of(spm_tok.decode(span))
      docs = [p[0][0] for p in pieces]
      group = groups[i // index.slots]
      assert all(len({d for d, _ in p}) == 1 for p in pieces)  # one document between [SEP]s
      assert docs == group[group.index(docs[0]):][:len(docs)]  # consecutive, within the group
      for p in pieces:
        assert [s for _, s in p] == list(range(p[0][1], p[0][1] + len(p)))  # whole, in order
      crossing += len(pieces) > 1
      seen[i // index.slots] |= {pair for p in pieces for pair in p}
  assert crossing
  # Over a few epochs the slots have drawn every sentence of every group.
  for group, pairs in zip(groups, seen):
    assert {d for d, _ in pairs} == set(group)


@pytest.mark.parametrize("key, value, message", [
    ("next_sentence", "nsp", "data.cross_document=True needs data.next_sentence='none', not 'nsp'"),
    ("short_seq_prob", 0.1, "data.short_seq_prob=0.1 must be 0 with data.cross_document=True"),
])
def test_settings_that_do_not_fit_spans_are_named(fullsent_config, spm_tok, key, value, message):
  fullsent_config[key] = value
  with pytest.raises(ValueError, match=re.escape(message)):
    pipeline.make_example_maker(fullsent_config, spm_tok, split="train", seed=0)
