"""Corpora: the builtin corpus, local files with bad bytes counted, clear errors, held-out split."""

import numpy as np
import pytest

from mebert.data import builtin_corpus, corpora


def test_builtin_corpus_is_big_and_deterministic():
  c = corpora.load_corpus("builtin")
  assert c.in_memory and c.stats["chars"] > 1_000_000 and len(c.documents) > 100
  assert all(d and "\n\n" not in d for d in c.documents)
  assert any("for loop" in d or "The \"for\" statement" in d for d in c.documents)  # pydoc topics
  # the stdlib walk is sorted, and the extraction is a pure function of the files
  import sysconfig
  root = sysconfig.get_paths()["stdlib"]
  files = builtin_corpus._stdlib_files(root)
  assert files == builtin_corpus._stdlib_files(root) and not any(f.startswith(("test/", "idlelib/")) for f in files)
  assert builtin_corpus._extract(root, files[::50], {}) == builtin_corpus._extract(root, files[::50], {})


def test_gutenberg_glob_counts_latin1_and_crlf(shared_data):
  c = corpora.load_corpus(str(shared_data / "gutenberg-nltk" / "*.txt"), one_doc_per_file=True)
  assert c.stats["files"] == 14 == len(c.documents)
  assert c.stats["latin1_files"] >= 1 and c.stats["crlf_files"] == 1
  caesar = next(d for d in c.documents if "Julius Caesar" in d[:200])
  assert "C\u00e6sar" in caesar and "\ufffd" not in caesar  # Latin-1 0xE6, decoded, not replaced
  assert not any("\r" in d for d in c.documents)
  paragraphs = corpora.load_corpus(str(shared_data / "gutenberg-nltk" / "*.txt"))
  assert len(paragraphs.documents) > 10_000  # blank lines split documents by default


def test_bom_is_stripped(shared_data):
  c = corpora.load_corpus(str(shared_data / "botchan" / "botchan.txt"))
  assert c.stats["bom_files"] == 1 and not c.documents[0].startswith("\ufeff")


def test_errors_name_the_path(tmp_path):
  missing = tmp_path / "missing.txt"
  with pytest.raises(FileNotFoundError, match="missing.txt"):
    corpora.load_corpus(str(missing))
  with pytest.raises(FileNotFoundError, match=r"nothing\*\.txt"):
    corpora.load_corpus(str(tmp_path / "nothing*.txt"))
  empty = tmp_path / "empty.txt"
  empty.write_text("\n  \n\n")
  with pytest.raises(ValueError, match="empty.txt") as e:
    corpora.load_corpus(str(empty))
  assert "\n" not in str(e.value)
  binary = tmp_path / "weights.bin"
  binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" * 10)
  good = tmp_path / "good.txt"
  good.write_text("Some text.\n")
  with pytest.raises(ValueError, match="weights.bin") as e:
    corpora.load_corpus(f"{good},{binary}")
  assert "\n" not in str(e.value)
  with pytest.raises(ValueError, match="empty spec"):
    corpora.load_corpus(" , ")
  with pytest.raises(FileNotFoundError, match="no_such_dataset") as e:
    corpora.load_corpus("tfds:no_such_dataset/en:1.0.0", tfds_data_dir=str(tmp_path))
  assert "\n" not in str(e.value)


def test_bad_input_is_counted_not_fatal(tmp_path):
  (tmp_path / "a.txt").write_bytes(b"First doc, line one.\nLine two.\n\n\n \n\nSecond doc caf\xc3\xa9 \xff bad byte.\n")
  (tmp_path / "b.txt").write_text("word " * 3000 + "\n\nshort\n")  # one 15,000-char line
  (tmp_path / "c.txt").write_text("   \n\n")  # an empty file among others: counted
  c = corpora.load_corpus(str(tmp_path / "*.txt"))
  assert c.stats["files"] == 3 and c.stats["empty_files"] == 1
  assert c.stats["utf8_replaced_chars"] == 1 and c.stats["long_lines_split"] == 1
  assert c.stats["empty_documents"] >= 2
  assert c.documents[0] == "First doc, line one.\nLine two."
  assert c.documents[1] == "Second doc caf\u00e9 \ufffd bad byte."
  assert max(len(line) for d in c.documents for line in d.split("\n")) <= corpora.DEFAULT_MAX_LINE_CHARS
  assert "".join(c.documents[2].split()) == "word" * 3000  # cut at spaces, nothing lost
  dir_corpus = corpora.load_corpus(str(tmp_path))  # a directory reads every file under it
  assert dir_corpus.documents == c.documents


def test_split_sentences():
  doc = 'He said "Hi." Then he left. J. Smith came at 5! Why?\nA line without end\n\n'
  assert corpora.split_sentences(doc) == ['He said "Hi."', "Then he left.", "J. Smith came at 5!", "Why?",
                                          "A line without end"]


def test_split_sentences_where_the_regex_goes_wrong():
  """Abbreviations and titles: the regex alone splits after "Mr." and "Dr."; pysbd's rules (where
  installed) keep those sentences whole."""
  pytest.importorskip("pysbd")
  doc = ("Mr. Smith went to Washington. He met Dr. Jones at 5 p.m. on Monday. Prices rose, "
         "e.g. for oil. Was it Dr. Who? No, Dr. Watson!")
  want = ["Mr. Smith went to Washington.", "He met Dr. Jones at 5 p.m. on Monday.",
          "Prices rose, e.g. for oil.", "Was it Dr. Who?", "No, Dr. Watson!"]
  assert corpora.split_sentences(doc) == want
  regex_only = corpora._SENTENCE_END.split(doc)  # pylint: disable=protected-access
  assert "Mr." in [p.strip() for p in regex_only]  # what the regex alone did


def test_heldout_split_is_deterministic_disjoint_and_stable(tmp_path):
  docs = [f"Document number {i}. It has a sentence." for i in range(400)]
  (tmp_path / "a.txt").write_text("\n\n".join(docs))
  (tmp_path / "b.txt").write_text("\n\n".join(["An extra document added later."] + docs[:0]))
  a = corpora.load_corpus(str(tmp_path / "a.txt"))
  train, ev = corpora.heldout_split(a, 0.05)
  assert len(set(train) & set(ev)) == 0 and len(train) + len(ev) == 400
  assert 8 <= len(ev) <= 40
  train2, ev2 = corpora.heldout_split(a, 0.05)
  assert np.array_equal(ev, ev2)
  # adding a file does not move any old document across the split (the hash is of the text)
  ab = corpora.load_corpus(f"{tmp_path / 'a.txt'},{tmp_path / 'b.txt'}")
  _, ev_ab = corpora.heldout_split(ab, 0.05)
  held = {ab.documents[i] for i in ev_ab}
  assert {a.documents[i] for i in ev} == held - {"An extra document added later."}
  tiny = corpora.load_corpus(str(tmp_path / "b.txt"))
  assert len(corpora.heldout_split(tiny, 0.02)[1]) == 0  # the min_eval_docs top-up takes at most 1/4
