"""The time-to-quality benchmark's second stage: both final checkpoints fine-tuned on SST-2 with
one recipe, mebert's (`python -m mebert.train --config=configs/finetune/sst2.py:DIR`), each
started from a Hugging Face folder through init.hf.

Both start from the encoder alone: the peer's BertForMaskedLM has no pooler, and mebert's pooler
was never trained on a sentence task (MLM-only), so mebert's copy drops its pooler and NSP head
too, and the fine-tuning initialises both poolers alike (mebert's init, the same seed). Early
stopping is off; the headline is the held-out accuracy at the last step on both sides (the
selection rule of mebert.bench.finetune_compare); the best evaluation, which the run also
reports, is chosen on that same held-out split and so is shown only beside it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

_DROPPED = ("bert.pooler.", "cls.seq_relationship.")


def encoder_copy(src: str, dst: str) -> str:
  """`src` (a Hugging Face BERT folder) without pooler and NSP head, at `dst`."""
  from safetensors.numpy import load_file, save_file  # pylint: disable=g-import-not-at-top

  os.makedirs(dst, exist_ok=True)
  for name in os.listdir(src):
    if name != "model.safetensors" and os.path.isfile(os.path.join(src, name)):
      shutil.copy(os.path.join(src, name), os.path.join(dst, name))
  tensors = load_file(os.path.join(src, "model.safetensors"))
  save_file({k: v for k, v in tensors.items() if not k.startswith(_DROPPED)},
            os.path.join(dst, "model.safetensors"), metadata={"format": "pt"})
  return dst


def last_eval(metrics_path: str) -> dict:
  """The last evaluation a fine-tuning run wrote to its metrics.jsonl."""
  last = {}
  with open(metrics_path, encoding="utf-8") as f:
    for line in f:
      record = json.loads(line)
      if record.get("split") == "eval" and "accuracy" in record:
        last = record
  return last


def finetune(folder: str, sst2_dir: str, workdir: str, repo: str, overrides: dict,
             log_path: str) -> dict:
  """Fine-tunes `folder` on SST-2; the last step's and the best held-out accuracy."""
  results = os.path.join(workdir, "eval_results.json")
  if not os.path.isfile(results):
    cmd = ([sys.executable, "-m", "mebert.train",
            f"--config={os.path.join(repo, 'configs', 'finetune', 'sst2.py')}:{sst2_dir}",
            f"--workdir={workdir}", f"--config.init.hf={folder}",
            "--config.early_stopping.patience=0", "--compilation_cache=none"]
           + [f"--config.{k}={v}" for k, v in overrides.items()])
    with open(log_path, "w", encoding="utf-8") as log:
      proc = subprocess.run(cmd, cwd=repo, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0 or not os.path.isfile(results):
      raise RuntimeError(f"SST-2 fine-tuning of {folder} failed; see {log_path}")
  with open(results, encoding="utf-8") as f:
    best = json.load(f)
  last = last_eval(os.path.join(workdir, "metrics.jsonl"))
  return {"last_step": int(last["step"]), "last_accuracy": float(last["accuracy"]),
          "best_step": int(best["step"]), "best_accuracy_on_the_same_split": best.get("accuracy"),
          "train_time_s": best.get("train_time_s"), "num_eval_examples": best.get(
              "num_eval_examples"), "workdir": workdir}
