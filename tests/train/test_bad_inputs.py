"""The catalogue of bad inputs: each gives a one-line error that names the culprit, of a kind the
entrypoint turns into `error: ...` and a non-zero exit, and loses nothing already written.

Most cases run in-process through the same functions `python -m mebert.train` calls, against a copy
of a finished tiny run whose files must come out byte for byte unchanged; a few go through the real
command line to check the exit status and the printed line.
"""

import hashlib
import json
import shutil
import subprocess
import sys

import pytest
from tiny_run import REPO, subprocess_env, tiny_config

from mebert.train import trainer

# What mebert.train.__main__.run() turns into "error: <message>" and exit status 1.
CLI_ERRORS = (ValueError, OSError, RuntimeError)
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "a", "film", "is", "good", "bad"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("finished")
  trainer.train_and_evaluate(tiny_config(**{"train.num_steps": 3}), str(workdir))
  return workdir


@pytest.fixture
def workdir(finished_run, tmp_path):
  return shutil.copytree(finished_run, tmp_path / "w")


def _digest(directory) -> dict:
  return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(directory.rglob("*")) if p.is_file()}


def _write(path, content):
  path.parent.mkdir(parents=True, exist_ok=True)
  if isinstance(content, bytes):
    path.write_bytes(content)
  else:
    path.write_text(content, encoding="utf-8")
  return str(path)


# ---- pretraining runs: (case id, function of tmp_path giving {"section.key": value}, culprit) ---

def _vocab_without_mask(d):
  return {"data.vocab": _write(d / "vocab.txt", "\n".join(t for t in VOCAB if t != "[MASK]"))}


HF_CONFIG = json.dumps({"model_type": "bert", "vocab_size": 400, "hidden_size": 32,
                        "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
                        "max_position_embeddings": 32})


def _hf_folder_without_safetensors(d):
  _write(d / "hf" / "config.json", HF_CONFIG)
  return {"init.hf": str(d / "hf")}


def _hf_folder_with_pickle_only(d):
  _write(d / "hf" / "config.json", HF_CONFIG)
  _write(d / "hf" / "pytorch_model.bin", b"PK\x03\x04 not really a zip")
  return {"init.hf": str(d / "hf")}


RUN_CASES = [
    ("heads do not divide hidden", lambda d: {"model.num_heads": 3}, "num_heads"),
    ("unknown position encoding", lambda d: {"model.position_encoding": "spiral"}, "spiral"),
    ("unknown activation", lambda d: {"model.hidden_act": "swishy"}, "swishy"),
    ("negative dropout", lambda d: {"model.dropout_rate": -0.1}, "dropout_rate"),
    ("mesh does not divide the devices", lambda d: {"mesh.data": 3}, "mesh"),
    ("two mesh axes of -1", lambda d: {"mesh.fsdp": -1}, "-1"),
    ("batch not divisible by data parallelism", lambda d: {"train.batch_size": 12}, "batch_size=12"),
    ("accumulation does not divide the batch", lambda d: {"train.grad_accum_steps": 3},
     "grad_accum_steps=3"),
    ("sequence longer than the position table", lambda d: {"data.seq_len": 64}, "64"),
    ("unknown optimizer", lambda d: {"train.optimizer": "sgdd"}, "sgdd"),
    ("unknown schedule", lambda d: {"train.schedule": "zigzag"}, "zigzag"),
    ("missing corpus file", lambda d: {"data.corpus": str(d / "nope.txt")}, "nope.txt"),
    ("corpus glob matching nothing", lambda d: {"data.corpus": str(d / "none*.txt")}, "none*.txt"),
    ("empty corpus file", lambda d: {"data.corpus": _write(d / "empty.txt", "\n \n")}, "empty.txt"),
    ("binary corpus file", lambda d: {"data.corpus": _write(d / "w.bin", b"\x00\x01" * 500)}, "w.bin"),
    ("unknown TFDS dataset", lambda d: {"data.corpus": "tfds:no_such_set/en:1.0.0",
                                        "data.tfds_data_dir": str(d)}, "no_such_set"),
    ("missing vocabulary", lambda d: {"data.vocab": str(d / "missing_vocab.txt")}, "missing_vocab.txt"),
    ("vocabulary without [MASK]", _vocab_without_mask, "[MASK]"),
    ("Hugging Face folder without safetensors", _hf_folder_without_safetensors, "safetensors"),
    ("Hugging Face folder with pickled weights only", _hf_folder_with_pickle_only,
     "pytorch_model.bin"),
    ("resume with shapes that do not fit the checkpoint", lambda d: {"model.hidden_size": 64},
     "hidden_size"),
]


@pytest.mark.parametrize("overrides_of, culprit", [c[1:] for c in RUN_CASES],
                         ids=[c[0] for c in RUN_CASES])
def test_bad_run_inputs(workdir, tmp_path, overrides_of, culprit):
  before = _digest(workdir)
  config = tiny_config(**overrides_of(tmp_path / "inputs"))
  with pytest.raises(CLI_ERRORS) as e:
    trainer.train_and_evaluate(config, str(workdir))
  message = str(e.value)
  assert "\n" not in message and culprit in message, message
  assert _digest(workdir) == before  # nothing already written was lost or rewritten


def test_resume_with_another_architecture_is_judged_by_the_checkpoints_own_config(workdir):
  """The check reads the config saved with the latest checkpoint, not WORKDIR/config.json (which
  a later run, or a hand, may have rewritten)."""
  (workdir / "config.json").unlink()
  before = _digest(workdir)
  with pytest.raises(ValueError, match="another architecture: model.hidden_size=64") as e:
    trainer.train_and_evaluate(tiny_config(**{"model.hidden_size": 64}), str(workdir))
  assert "\n" not in str(e.value) and _digest(workdir) == before


def test_new_run_initialised_from_a_directory_that_is_not_a_checkpoint(tmp_path):
  (tmp_path / "not_a_run").mkdir()
  config = tiny_config(**{"init.checkpoint": str(tmp_path / "not_a_run")})
  with pytest.raises(CLI_ERRORS, match="not_a_run") as e:
    trainer.train_and_evaluate(config, str(tmp_path / "new"))
  assert "\n" not in str(e.value)


def test_eval_of_a_step_that_does_not_exist(workdir):
  with pytest.raises(CLI_ERRORS, match="step 99") as e:
    trainer.evaluate_checkpoint(tiny_config(), str(workdir), 99)
  assert "\n" not in str(e.value)


# ---- fine-tuning data files --------------------------------------------------------------------

def _task(kind="classification"):
  from mebert.tasks.defaults import finetune_defaults

  c = finetune_defaults()
  c.task.kind = kind
  return c


DATA_CASES = [
    ("missing file", lambda d: str(d / "gone.tsv"), "gone.tsv"),
    ("empty file", lambda d: _write(d / "empty.tsv", ""), "empty.tsv"),
    ("binary file", lambda d: _write(d / "blob.tsv", b"sentence\tlabel\n\x00\x00\xff\t1\n"), "blob.tsv"),
    ("wrong TSV columns", lambda d: _write(d / "cols.tsv", "text\ttarget\ngood\t1\n"), "cols.tsv"),
    ("short row", lambda d: _write(d / "short.tsv", "sentence\tlabel\ngood\t1\nbad\n"), "short.tsv line 3"),
    ("Latin-1 text", lambda d: _write(d / "latin1.tsv", "sentence\tlabel\ncaf\u00e9 cr\u00e8me\t1\n"
                                      .encode("latin-1")), "latin1.tsv"),
    ("a single 10 MB line", lambda d: _write(d / "huge.csv", "sentence,label\n\"" + "x" * 10_000_000
                                             + "\",1\n"), "huge.csv"),
    ("JSONL line that is not JSON", lambda d: _write(d / "bad.jsonl", '{"sentence": "a", "label": 1}\n{oops\n'),
     "bad.jsonl line 2"),
]


@pytest.mark.parametrize("path_of, culprit", [c[1:] for c in DATA_CASES], ids=[c[0] for c in DATA_CASES])
def test_bad_task_data(tmp_path, path_of, culprit):
  from mebert.tasks import data

  c = _task()
  with pytest.raises(CLI_ERRORS) as e:
    data.read_examples(path_of(tmp_path), c.task, c.data)
  assert "\n" not in str(e.value) and culprit in str(e.value), str(e.value)


def test_unknown_label_at_eval_names_label_and_line(tmp_path):
  from mebert.tasks import data

  c = _task()
  path = _write(tmp_path / "dev.tsv", "sentence\tlabel\ngood\t1\nmeh\tneutral\n")
  with pytest.raises(CLI_ERRORS) as e:
    data.check_labels(data.read_examples(path, c.task, c.data), ["0", "1"], "classification")
  assert "'neutral'" in str(e.value) and "dev.tsv line 3" in str(e.value)


def test_regression_label_that_is_not_a_number(tmp_path):
  from mebert.tasks import data

  c = _task("regression")
  path = _write(tmp_path / "sts.tsv", "sentence\tlabel\ngood\t4.5\nbad\thigh\n")
  with pytest.raises(CLI_ERRORS, match=r"sts.tsv line 3: label 'high' is not a number"):
    data.check_labels(data.read_examples(path, c.task, c.data), [], "regression")


# ---- the real command line: exit status and the printed line -----------------------------------

def _cli(workdir, *flags):
  return subprocess.run(
      [sys.executable, "-m", "mebert.train", "--config=configs/pretrain/tiny.py",
       f"--workdir={workdir}", *flags], cwd=REPO, env=subprocess_env(), capture_output=True,
      text=True, timeout=300)


@pytest.mark.parametrize("flags, culprit", [
    (["--config.model.num_layerz=2"], "num_layerz"),
    (["--config.train.batch_size=eight"], "eight"),
    (["--config.data.corpus=/no/such/corpus.txt"], "/no/such/corpus.txt"),
    (["--mode=eval", "--step=99"], "step 99"),
], ids=["unknown key", "wrong type", "missing corpus", "missing step"])
def test_command_line_exits_non_zero_with_one_line(workdir, flags, culprit):
  before = _digest(workdir)
  result = _cli(workdir, *flags)
  assert result.returncode != 0
  last = result.stderr.strip().splitlines()[-1]
  assert culprit in last, result.stderr[-2000:]
  assert "Traceback" not in result.stderr, result.stderr[-2000:]
  assert _digest(workdir) == before
