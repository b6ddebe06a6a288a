"""Fine-tuning past a damaged latest checkpoint (issue 20, item 2): the resumed run falls back,
moves the unreadable step aside, and its forced save of that step number succeeds (it raised
Orbax's StepAlreadyExistsError)."""

import pytest

from mebert.tasks import finetune
from mebert.train import checkpoints


@pytest.mark.slow
def test_finetuning_resaves_a_damaged_latest_step(tiny_config, vocab_file, sentences, tmp_path):
  texts = sentences(96, seed=5)
  path = tmp_path / "train.tsv"
  path.write_text("sentence\tlabel\n" + "".join(f"{t}\t{int('good' in t)}\n" for t in texts))
  config = tiny_config("classification", vocab_file, **{
      "data.train_files": str(path), "data.holdout_fraction": 0.2, "data.pack": False,
      "train.num_steps": 8, "eval.every_steps": 4, "checkpoint.keep": 2})
  workdir = tmp_path / "w"
  first = finetune.train_and_evaluate(config, str(workdir))
  step_8 = workdir / "checkpoints" / "8"
  arrays = [p for p in (step_8 / "params").rglob("*") if p.is_file() and p.parent.name == "d"]
  assert first["last_step"] == 8 and arrays
  for f in arrays:
    f.unlink()

  again = finetune.train_and_evaluate(config, str(workdir))  # from step 4; saves step 8 again
  assert again["last_step"] == 8
  names = sorted(p.name for p in (workdir / "checkpoints").iterdir() if not p.name.startswith("."))
  assert names == ["4", "8", "8.damaged"]
  _, _, step = checkpoints.restore_params_and_step(str(workdir))
  assert step == 8
  assert again["accuracy"] == first["accuracy"]  # steps 5-8 replayed on the same batches
