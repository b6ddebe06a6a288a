"""python -m mebert.embed: sentence-transformers parity on MiniLM, pooling, layers, bucketing, inputs."""

import csv

import numpy as np
import pytest

from mebert import embed


@pytest.fixture(scope="module")
def sst2_head(shared_data, tmp_path_factory):
  """The first 200 SST-2 training sentences as a TSV with the original header."""
  src = shared_data / "sst2" / "train.tsv"
  if not src.is_file():
    pytest.skip(f"{src} not found")
  with open(src, encoding="utf-8") as f:
    lines = [next(f) for _ in range(201)]
  path = tmp_path_factory.mktemp("sst2") / "head.tsv"
  path.write_text("".join(lines), encoding="utf-8")
  return path


def test_minilm_matches_sentence_transformers(minilm_dir, sst2_head):
  st = pytest.importorskip("sentence_transformers")
  sentences = embed.read_sentences(str(sst2_head), "sentence")
  assert len(sentences) == 200 and sentences[0].startswith("hide new secretions")
  encoder = embed.load_encoder(str(minilm_dir))
  assert encoder.max_length == 256  # from sentence_bert_config.json, as sentence-transformers
  ours = embed.embed_sentences(encoder, sentences, pooling="mean", normalize=True, batch_size=100,
                               progress=False)
  model = st.SentenceTransformer(str(minilm_dir), device="cpu")
  ref = model.encode(sentences, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
  cos = (ours * ref).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(ref, axis=1)
  assert cos.min() >= 0.9999, cos.min()
  np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


@pytest.fixture(scope="module")
def tiny_workdir(tmp_path_factory):
  """A mebert workdir (params checkpoint + vocab) of a tiny random BERT, made by import-hf."""
  pytest.importorskip("orbax.checkpoint")
  from mebert.interop.hf_export import export_hf
  from mebert.interop.workdir import import_to_workdir
  from tiny_models import CFG, VOCAB, random_params  # pylint: disable=import-error

  root = tmp_path_factory.mktemp("tiny")
  (root / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
  export_hf(random_params(CFG, seed=1), CFG, str(root / "hf"), tokenizer_path=str(root / "vocab.txt"),
            parity=False)
  import_to_workdir(str(root / "hf"), str(root / "wd"), parity=False)
  return root / "wd"


SENTENCES = ["the film is good .", "a bad film", "not good , not bad !", "the", "",
             "the film is not good , the film is bad , the film is the film ." * 2,
             "goodly films"]


@pytest.fixture(scope="module")
def reference(tiny_workdir):
  """All sentences in one batch padded far wider than any bucket, through BertModel directly:
  the hidden states (at real tokens) that bucketing, sorting and batching must not change."""
  import jax
  from mebert.model.encoder import BertModel

  encoder = embed.load_encoder(str(tiny_workdir))
  ids, types = encoder.tokenize(SENTENCES, encoder.max_length)
  batch = np.zeros((3, len(SENTENCES), 48), np.int32)
  for j, (i, t) in enumerate(zip(ids, types)):
    batch[0, j, :len(i)], batch[1, j, :len(i)], batch[2, j, :len(i)] = i, t, 1
  states = jax.jit(lambda p, i, t, m: BertModel(encoder.cfg).apply(
      {"params": p}, i, t, m, return_hidden_states=True).hidden_states)(encoder.params, *batch)
  return encoder, [[np.asarray(h[j, :len(i)]) for h in states] for j, i in enumerate(ids)]


@pytest.mark.parametrize("pooling", ["cls", "mean", "max"])
def test_bucketing_keeps_order_and_values(reference, pooling):
  encoder, states = reference
  got = embed.embed_sentences(encoder, SENTENCES, pooling=pooling, layers=(0, -1), batch_size=4,
                              progress=False)
  assert got.shape == (len(SENTENCES), 2 * encoder.cfg.hidden_size)
  pool = {"cls": lambda h: h[0], "mean": lambda h: h.mean(0), "max": lambda h: h.max(0)}[pooling]
  want = np.stack([np.concatenate([pool(s[0]), pool(s[-1])]) for s in states])
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_cli_on_text_and_csv_inputs(tiny_workdir, tmp_path, capsys):
  text = tmp_path / "in.txt"
  text.write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
  out = tmp_path / "out.npy"
  assert embed.main([f"--model={tiny_workdir}", f"--input={text}", f"--output={out}",
                     "--pooling=mean", "--layers=0,-1", "--normalize", "--batch_size=4"]) == 0
  vectors = np.load(out)
  assert vectors.shape == (len(SENTENCES), 64)
  np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
  table = tmp_path / "in.csv"
  with open(table, "w", encoding="utf-8", newline="") as f:
    csv.writer(f).writerows([["label", "review"]] + [[i % 2, s] for i, s in enumerate(SENTENCES)])
  out2 = tmp_path / "out2.npy"
  assert embed.main([f"--model={tiny_workdir}", f"--input={table}", f"--output={out2}",
                     "--column=review", "--layers=0,-1", "--normalize", "--batch_size=4"]) == 0
  np.testing.assert_allclose(np.load(out2), vectors, atol=1e-5)
  assert embed.main([f"--model={tiny_workdir}", f"--input={table}", f"--output={out2}",
                     "--column=text"]) == 2
  assert "no column 'text'" in capsys.readouterr().err


def test_read_sentences_by_index_and_without_header(tmp_path):
  path = tmp_path / "x.tsv"
  path.write_text('a "quoted" one \t1\nsecond\t0\n', encoding="utf-8")
  assert embed.read_sentences(str(path), "0", header=False) == ['a "quoted" one ', "second"]
  assert embed.read_sentences(str(path), "1", header=True) == ["0"]
