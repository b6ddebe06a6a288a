"""The scaling tables: step time from harness JSONs (fabricated here), memory from compiled meshes."""

import json
import pathlib

import pytest

from mebert.bench import cases, scaling

REPO = pathlib.Path(__file__).resolve().parents[2]


def _record(case_name, step_s, util=0.5, date="2026-11-27"):
  case = cases.get_case(case_name)
  tokens = case.batch_size * case.seq_len
  return {"case": case.name, "seq_len": case.seq_len, "batch_size": case.batch_size,
          "model": dict(case.size), "mebert_step_time_s": step_s,
          "mebert_tokens_per_s": tokens / step_s, "mebert_useful_flop_util": util,
          "machine": {"nproc": 2, "cpu_model": "EPYC", "load_average": [2.0], "date": date},
          "command": f"python -m mebert.bench --case={case.name} --only-mebert"}


def _write(folder, name, record):
  (folder / name).write_text(json.dumps(record))


def test_every_size_has_the_three_lengths_at_its_own_token_count():
  for size in ("mini", "small", "base"):
    found = [cases.get_case(f"{size}-{n}") for n in (128, 256, 512)]
    assert len({c.tokens_per_step for c in found}) == 1, size
    assert all(c.size == found[0].size and c.data == "synthetic" for c in found)
    assert [c.max_predictions for c in found] == [20, 38, 76]


def test_step_time_table_from_json_files(tmp_path):
  _write(tmp_path, "mini-128.json", _record("mini-128", 2.0, util=0.411))
  _write(tmp_path, "mini-512.json", _record("mini-512", 3.0))
  _write(tmp_path, "base-256.json", _record("base-256", 7.0))
  # Three runs of one case: the median one (8 s) is shown, whichever order the files come in.
  for i, step in enumerate((9.0, 6.0, 8.0)):
    _write(tmp_path, f"base-128-{i}.json", _record("base-128", step))
  (tmp_path / "notes.txt").write_text("not a result")
  records = scaling.load_records(str(tmp_path))
  table = scaling.step_time_table([r for _, r in records])
  lines = table.splitlines()
  assert lines[0].startswith("| model | tokens / step | 128 tokens | 256 tokens | 512 tokens |")
  mini = next(line for line in lines if line.startswith("| mini |"))
  base = next(line for line in lines if line.startswith("| base |"))
  assert lines.index(mini) < lines.index(base)  # by model size, not alphabetically
  assert "| 4,096 | 2,000 ms, 2,048 tok/s, 41.1% useful | – | 3,000 ms, 1,365 tok/s" in mini
  assert mini.endswith("| 1.50x |")  # 1.5x the time per token at 512 as at 128
  assert "8,000 ms, 128 tok/s, 50.0% useful (median of 3)" in base and base.endswith("| – |")
  assert "--case=base-256 --only-mebert" in scaling.provenance(records)


def test_a_file_that_is_not_a_result_is_named(tmp_path):
  record = _record("mini-128", 2.0)
  del record["mebert_step_time_s"]
  _write(tmp_path, "broken.json", record)
  with pytest.raises(ValueError, match=r"broken\.json.*'mebert_step_time_s'"):
    scaling.load_records(str(tmp_path))
  with pytest.raises(ValueError, match="no \\*.json"):
    scaling.load_records(str(tmp_path / "nothing-here"))


def test_main_prints_the_table(tmp_path, capsys):
  _write(tmp_path, "a.json", _record("small-256", 4.0))
  scaling.main([f"--json-dir={tmp_path}"])
  out = capsys.readouterr().out
  assert "| small | 2,048 | 4,000 ms, 512 tok/s, 50.0% useful |" in out  # one length: no ratio
  assert "vs" not in out.splitlines()[0]
  with pytest.raises(SystemExit, match="--mesh='2,2'"):
    scaling.main(["--memory", "--mesh=2,2"])


def test_memory_table_of_compiled_meshes(tmp_path):
  """The tiny model compiled on three meshes of the 8 test devices: FSDP and tensor parallelism
  hold less state per device than pure data parallelism, and the table shows each mesh."""
  config = scaling.load_config(str(REPO / "configs" / "pretrain" / "tiny.py"))
  config.model.hidden_size, config.model.num_layers, config.model.num_heads = 32, 1, 2
  config.model.intermediate_size, config.model.max_position_embeddings = 64, 32
  config.model.vocab_size = 128
  config.data.seq_len, config.data.max_predictions_per_seq, config.train.batch_size = 32, 5, 16
  reports = scaling.memory_reports(config, [(8, 1, 1), (1, 8, 1), (2, 2, 2)], str(tmp_path),
                                   compiler_options={"xla_backend_optimization_level": 0})
  data, fsdp, mixed = reports
  assert fsdp["state_bytes_per_device"] * 4 < data["state_bytes_per_device"]
  assert data["state_bytes_per_device"] > mixed["state_bytes_per_device"] > fsdp["state_bytes_per_device"]
  table = scaling.memory_table(reports)
  assert "| 8 x 1 x 1 | 2 |" in table and "| 1 x 8 x 1 | 2 |" in table and "| 2 x 2 x 2 | 4 |" in table
  assert all(r["temp_size_in_bytes"] > 0 for r in reports)
