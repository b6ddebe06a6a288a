"""Tiny fine-tuning and distillation runs for the loop's tests: a vocabulary and a learnable
sentiment TSV, the config in Python, and the same config as a file for `python -m mebert.train`."""

import random

WORDS = ("the a film movie plot actor story boring sad bad awful good great funny fine is was not "
         "very paris london").split()
POSITIVE = {"good", "great", "fine"}


def write_task_data(folder, n: int = 240):
  """folder/vocab.txt and folder/train.tsv (label 1 when a positive word occurs)."""
  (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
                                              + WORDS) + "\n")
  rng = random.Random(0)
  lines = ["sentence\tlabel"]
  for _ in range(n):
    words = [rng.choice(WORDS) for _ in range(rng.randint(3, 10))]
    lines.append(" ".join(words) + "\t" + str(int(bool(POSITIVE & set(words)))))
  (folder / "train.tsv").write_text("\n".join(lines) + "\n")
  return folder


def finetune_config(data_folder, teacher: str | None = None, **keys):
  """A tiny fine-tuning config (hidden 32, one layer, seq 32) on write_task_data's files; with
  `teacher`, the distillation config of a random student of the same shape."""
  from mebert.tasks.defaults import finetune_defaults

  c = finetune_defaults()
  c.data.vocab, c.data.train_files = str(data_folder / "vocab.txt"), str(data_folder / "train.tsv")
  c.data.holdout_fraction, c.data.seq_len, c.data.buckets = 0.25, 32, (32,)
  c.model.hidden_size, c.model.num_layers, c.model.num_heads = 32, 1, 2
  c.model.intermediate_size, c.model.max_position_embeddings = 64, 32
  c.train.batch_size, c.eval.batch_size = 16, 32
  c.train.learning_rate, c.train.warmup_steps = 1e-3, 2
  c.checkpoint.async_save = False
  if "random" in c.init:  # where a random start must be asked for by name
    c.init.random = True
  if teacher is not None:
    from mebert.compress import distill

    c = distill.distill_defaults(c, str(teacher))
  for key, value in keys.items():
    section, name = key.split(".")
    c[section][name] = value
  return c


def write_config_file(path, data_folder, teacher: str | None = None, **keys) -> str:
  """finetune_config(...) as a config file for the command line."""
  path.write_text(
      "import pathlib, sys\n"
      f"sys.path.insert(0, {str(__import__('pathlib').Path(__file__).parent)!r})\n"
      "from task_runs import finetune_config\n\n\n"
      "def get_config():\n"
      f"  return finetune_config(pathlib.Path({str(data_folder)!r}), {teacher!r}, **{keys!r})\n")
  return str(path)
