"""mebert.bench.pipeline at a tiny scale: it reads the trainer's stream and counts examples per
core; the figures themselves mean nothing here (a loaded 2-core machine)."""

import json

import pytest

from mebert.bench import pipeline


def _run(capsys, tmp_path, *args):
  pipeline.main(["--seq-len", "128", "--batches", "2", "--warmup", "1", "--batch-size", "4",
                 "--vocab-size", "1000", f"--workdir={tmp_path}", *args])
  return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_builtin_stream_and_the_cores_a_host_needs(tmp_path):
  from mebert.data import corpora, tokenizer

  docs = corpora.builtin_documents_cleaned({})[:40]  # a small vocabulary, trained in a second
  tok = tokenizer.load_tokenizer(tokenizer.train_sentencepiece(
      docs, vocab_size=1000, output_prefix=str(tmp_path / "spm"), lowercase=True))
  row = pipeline.measure(pipeline.data_config("builtin", 128, 0), tok, batch_size=4, warmup=1,
                         batches=2)
  assert (row["corpus"], row["seq_len"], row["workers"], row["cores"]) == ("builtin", 128, 0, 1)
  assert row["examples_per_s"] > 0 and row["real_tokens_per_s"] > 0
  report = {"target": "tpu:v5p-8", "chip": "v5p", "seq_len": 128,  # --mode=compile's shape
            "roofline": {"tokens_per_s_per_chip_upper_bound": 128_000.0}}
  (need,) = pipeline.cores_needed([row, dict(row, seq_len=512)], report)
  assert need["host_examples_per_s_needed"] == pytest.approx(128_000 * 4 / 128)  # 4 chips a host
  assert need["cores_needed"] == pytest.approx(4000 / row["examples_per_s_per_core"])
  assert need["host_vcpus"] == 208


def test_a_report_without_a_roofline_is_refused(tmp_path):
  with pytest.raises(ValueError, match="no roofline"):
    pipeline.cores_needed([], {"target": "", "seq_len": 128})


@pytest.mark.slow
def test_cli_on_both_corpora_with_a_worker(tmp_path, capsys):
  """The command end to end: the trained vocabulary, the TFDS copy of the built-in corpus."""
  out = _run(capsys, tmp_path, "--workers", "1")
  assert [r["corpus_kind"] for r in out["rows"]] == ["builtin", "tfds"]
  assert out["rows"][1]["corpus"].startswith("tfds:mebert_text_corpus")
  assert all(r["cores"] == 1 and r["examples_per_s"] > 0 for r in out["rows"])
  assert (tmp_path / "vocab").is_dir() and (tmp_path / "tfds").is_dir()
