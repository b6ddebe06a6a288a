"""Short runs just work: `--config.train.num_steps=3` on every shipped pretraining, fine-tuning and
distillation config runs to the end (a warmup longer than the run is cut to it, with a warning);
a phase-2 recipe, which continues its phase 1 by design (init.continue_from), runs three steps more
after three of its phase 1.

The configs keep their identity (task, columns, schedule, optimizer, sequence length, warmup) but
run shrunk, as nothing else would finish on a CPU: a 2-layer, 32-wide model; batches of 8 without
accumulation; rows of at most 2,048 tokens; one eval batch; pretraining on the built-in corpus; fine-tuning from random weights
on a tiny file written in the config's own columns instead of its dataset and all-MiniLM-L6-v2;
the distillation's teacher a 6-layer tiny fine-tuned sst2 model. Slow (one run per config); tests/train/test_train_step.py checks the warmup rule fast.
"""

import pathlib
import random

import pytest
from test_configs import ARGS, CONFIGS, load

pytestmark = pytest.mark.slow

WORDS = "the a film plot good bad great awful said visited paris london john".split()
# Rows longer than this are cut to it (as the recipes' own tiny variants do): 8 rows of 8,192
# tokens run out of memory on a CPU even in a 32-wide model.
MAX_CPU_SEQ_LEN = 2048
SMALL_MODEL = {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64}


def _cases(family):
  for path in sorted((CONFIGS / family).glob("*.py")):
    rel = str(path.relative_to(CONFIGS))
    for arg in ARGS.get(rel, [None]):
      yield pytest.param(path, arg, id=f"{rel}:{arg}" if arg else rel)


def _shrink_pretraining(c):
  if c.data.corpus != "builtin":  # an experiment's own corpus (research data): the built-in one
    c.data.corpus, c.data.eval_corpus = "builtin", ""
  c.model.update(SMALL_MODEL)
  c.model.vocab_size = 0  # the tokenizer's
  c.data.vocab_size = 400
  c.train.batch_size, c.eval.batch_size, c.eval.num_batches = 8, 8, 1
  c.train.grad_accum_steps = 1  # a batch of 8 rows on 8 devices has no micro-batches
  if int(c.data.seq_len) > MAX_CPU_SEQ_LEN:  # ModernBERT's 8,192-token context extension
    c.data.max_predictions_per_seq = (int(c.data.max_predictions_per_seq) * MAX_CPU_SEQ_LEN
                                      // int(c.data.seq_len))
    c.data.seq_len = MAX_CPU_SEQ_LEN


# Phase-2 recipes continue their phase 1 (init.continue_from): run three steps of it first.
PHASE1_OF = {"phase2": None, "lamb_phase2": "lamb"}


@pytest.fixture(scope="module")
def phase1(tmp_path_factory):
  """(path, phase-1 arg) -> a workdir of that recipe's phase 1 after three steps."""
  from mebert.train import trainer

  made = {}

  def get(path, arg):
    if (path, arg) not in made:
      c = load(path, arg)
      c.train.num_steps = 3
      _shrink_pretraining(c)
      workdir = tmp_path_factory.mktemp("phase1")
      trainer.train_and_evaluate(c, str(workdir))
      made[(path, arg)] = workdir
    return made[(path, arg)]

  return get


@pytest.mark.parametrize("path, arg", list(_cases("pretrain")) + list(_cases("experiments")))
def test_pretraining_config_runs_three_steps(path, arg, tmp_path, phase1):
  from mebert.train import trainer

  c = load(path, arg)
  warmup = int(c.train.warmup_steps)
  c.train.num_steps = 3
  _shrink_pretraining(c)
  if arg in PHASE1_OF:  # three more steps after phase 1's three (or three of its own schedule)
    previous = phase1(path, PHASE1_OF[arg])
    c.init.continue_from, c.data.vocab = str(previous), str(previous / "vocab" / "spm.model")
    if not c.init.get("restart_schedule", False):
      c.train.num_steps = 6
  final = trainer.train_and_evaluate(c, str(tmp_path))
  assert final["step"] == c.train.num_steps and c.train.warmup_steps == warmup


def _task_file(folder: pathlib.Path, c, n: int = 48) -> str:
  """A file the config reads as it would its dataset: its columns, labels and format."""
  rng = random.Random(0)
  sentence = lambda: " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9)))
  task = c.task
  if task.kind == "token_classification":
    tags = ["O", "B-PER", "I-PER", "B-LOC"]
    blocks = ["\n".join(f"{w} X X {rng.choice(tags)}" for w in sentence().split())
              for _ in range(n)]
    path = folder / "train.txt"
    path.write_text("\n\n".join(blocks) + "\n")
    return str(path)
  labels = [str(x) for x in task.labels] or ["0", "1"]
  if str(task.text_column).isdigit():  # GLUE's CoLA: no header, columns by index
    width = 1 + max(int(task.text_column), int(task.label_column))
    rows = []
    for _ in range(n):
      row = ["x"] * width
      row[int(task.text_column)], row[int(task.label_column)] = sentence(), rng.choice(labels)
      rows.append("\t".join(row))
    path = folder / "train.tsv"
    path.write_text("\n".join(rows) + "\n")
    return str(path)
  columns = [task.text_column] + ([task.text_pair_column] if task.text_pair_column else [])
  rows = ["\t".join(columns + [task.label_column])]
  for _ in range(n):
    label = f"{rng.uniform(0, 5):.2f}" if task.kind == "regression" else rng.choice(labels)
    rows.append("\t".join([sentence() for _ in columns] + [label]))
  path = folder / "train.tsv"
  path.write_text("\n".join(rows) + "\n")
  return str(path)


def _shrink_task(c, folder: pathlib.Path, vocab: str):
  c.data.train_files = c.data.eval_files = _task_file(folder, c)
  c.data.holdout_fraction = 0.0
  c.data.vocab, c.init.hf, c.init.checkpoint = vocab, "", ""
  if "random" in c.init:  # where a random start must be asked for by name
    c.init.random = True
  c.model.update(SMALL_MODEL)
  c.model.max_position_embeddings = max(512, int(c.data.seq_len))
  c.train.batch_size, c.eval.batch_size = 8, 8
  c.checkpoint.async_save = False


@pytest.fixture(scope="module")
def vocab(tmp_path_factory):
  path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
  path.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "x"] + WORDS) + "\n")
  return str(path)


@pytest.fixture(scope="module")
def teacher(vocab, tmp_path_factory):
  """A 6-layer tiny sst2 model: the distillation config copies its layers 0, 2 and 4."""
  from mebert.tasks import finetune

  folder = tmp_path_factory.mktemp("teacher")
  c = load(CONFIGS / "finetune" / "sst2.py")
  _shrink_task(c, folder, vocab)
  c.model.num_layers, c.train.num_steps = 6, 3
  finetune.train_and_evaluate(c, str(folder / "work"))
  return str(folder / "work")


@pytest.mark.parametrize("path, arg", list(_cases("finetune")) + list(_cases("distill")))
def test_finetuning_config_runs_three_steps(path, arg, tmp_path, vocab, request):
  from mebert.compress import distill
  from mebert.tasks import finetune

  c = load(path, arg)
  warmup = (int(c.train.warmup_steps), float(c.train.warmup_ratio))
  c.train.num_steps = 3
  _shrink_task(c, tmp_path, vocab)
  if "distill" in c:
    c.distill.teacher = request.getfixturevalue("teacher")
    result = distill.run(c, str(tmp_path / "work"), "train")
  else:
    result = finetune.run(c, str(tmp_path / "work"), "train")
  assert result["last_step"] == 3
  assert (int(c.train.warmup_steps), float(c.train.warmup_ratio)) == warmup
