"""Fine-tuning, mebert against the PyTorch peer, like for like: one command, one row each.

  python -m mebert.bench.finetune_compare --config=configs/finetune/sst2.py:GLUE/SST-2 --workdir=runs/cmp \
      [--selection=last|split] [--same_start] [--config.train.num_epochs=2 ...]

Both sides run the same config with the same overrides, one after the other, each alone:
`python -m mebert.train` and `python -m mebert.bench.finetune_peer` (the peer on mebert's recipe:
its dropout, its evaluation cadence and its selection rule). What the row reports is the same
rule on both sides, fixed before the runs:
  last   (the default) early stopping off; both sides' scores at the last step, on the config's
         evaluation split. Nothing is chosen on the data that is scored.
  split  the config's held-out part of train becomes a selection split
         (data.holdout_offset = data.holdout_fraction unless given), on which each side keeps its
         best evaluation (early_stopping.metric, with the config's patience); the kept weights
         and the last step's are then scored on the evaluation split at offset 0, which neither
         run trained or selected on (mebert: --mode=eval of its best and last checkpoints).
Each side's own best-on-the-evaluation-split figure (mebert's eval_results.json before this
tool) is in the JSON too, labelled as chosen on the data it scores. Prints the table and writes
WORKDIR/compare.json.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys

from absl import app, flags
from ml_collections import config_flags

from mebert import host_memory

_CONFIG = config_flags.DEFINE_config_file("config", None, "Fine-tuning config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for both runs and compare.json.")
_SELECTION = flags.DEFINE_enum("selection", "last", ["last", "split"], "What both sides report "
                               "(see the module docstring).")
_SAME_START = flags.DEFINE_bool("same_start", False, "The peer takes mebert's example order and "
                                "initial classifier (finetune_peer --same_start).")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def config_args(argv: list[str]) -> list[str]:
  """--config=FILE[:ARG] and every --config.KEY=VALUE of the command line, as given."""
  out = [a for a in argv if a.startswith("--config=") or a.startswith("--config.")]
  if not any(a.startswith("--config=") for a in out):
    raise SystemExit("give the config as --config=FILE (with '=')")
  return out


def selection_overrides(config, selection: str) -> tuple[list[str], float | None]:
  """Extra --config overrides for both sides, and the offset of the split the selection is
  scored on (None for `last`)."""
  if selection == "last":
    return ["--config.early_stopping.patience=0"], None
  data = config.data
  if data.eval_files or float(data.holdout_fraction) <= 0:
    raise SystemExit("--selection=split needs a config that holds out part of data.train_files "
                     "(data.holdout_fraction > 0, no data.eval_files)")
  offset = float(data.holdout_offset) or float(data.holdout_fraction)
  return [f"--config.data.holdout_offset={offset}"], 0.0


def _run(cmd: list[str], log_path: str) -> str:
  with open(log_path, "w", encoding="utf-8") as log:
    log.write(" ".join(shlex.quote(c) for c in cmd) + "\n")
    log.flush()
    proc = subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=log, text=True)
    log.write(proc.stdout)
  if proc.returncode != 0:
    raise SystemExit(f"{cmd[2]} failed (exit {proc.returncode}); see {log_path}")
  return proc.stdout.strip().splitlines()[-1]  # both print their JSON record last


def evals(metrics_path: str) -> list[dict]:
  with open(metrics_path, encoding="utf-8") as f:
    return [r for r in map(json.loads, f) if r.get("split") == "eval"]


def run_mebert(args: list[str], extra: list[str], workdir: str, report_offset) -> dict:
  train = [sys.executable, "-m", "mebert.train", f"--workdir={workdir}"] + args + extra
  best = json.loads(_run(train, workdir + ".log"))
  last = evals(os.path.join(workdir, "metrics.jsonl"))[-1]
  record = {"best": best, "last": last, "last_step": int(last["step"]),
            "train_time_s": best.get("train_time_s"),
            "train_real_tokens_per_s": best.get("train_real_tokens_per_s")}
  if report_offset is not None:
    scored = {}
    for which, step in (("best", None), ("last", record["last_step"])):
      cmd = ([sys.executable, "-m", "mebert.train", f"--workdir={workdir}", "--mode=eval"] + args
             + extra + [f"--config.data.holdout_offset={report_offset}"]
             + ([f"--step={step}"] if step is not None else []))
      scored[which] = json.loads(_run(cmd, f"{workdir}.eval_{which}.log"))
    record["report_split"] = scored
  return record


def run_peer(args: list[str], extra: list[str], path: str, report_offset, same_start) -> dict:
  cmd = ([sys.executable, "-m", "mebert.bench.finetune_peer", f"--json={path}"] + args + extra
         + (["--same_start"] if same_start else [])
         + ([f"--report_offset={report_offset}"] if report_offset is not None else []))
  return json.loads(_run(cmd, path.replace(".json", ".log")))


def headline(record: dict, side: str, metric: str, selection: str) -> dict:
  """The like-for-like scores of one side: the last step's, and the selected weights' (split)."""
  if selection == "last":
    last = record["last"] if side == "mebert" else record
    return {"last": last.get(metric)}
  scored = record["report_split"]
  return {"last": scored["last"].get(metric), "selected": scored["best"].get(metric)}


def table(result: dict) -> str:
  metric, selection = result["metric"], result["selection"]
  head = (f"| framework | steps | train time | real tokens/s | {metric}, last step |"
          + (f" {metric}, selected on the selection split |" if selection == "split" else ""))
  lines = [head, "|---" * (5 + (selection == "split")) + "|"]
  for side in ("mebert", "peer"):
    r, h = result[side], result["headline"][side]
    cells = [side, f"{r['last_step']:,}", f"{r['train_time_s']:.1f} s",
             f"{r['train_real_tokens_per_s']:,.0f}", f"{h['last']:.4f}"]
    if selection == "split":
      cells.append(f"{h['selected']:.4f}")
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main(argv):
  del argv
  host_memory.configure()  # before JAX starts: the opt-in host tuning (mebert/host_memory.py)
  config, workdir = _CONFIG.value, os.path.abspath(_WORKDIR.value)
  os.makedirs(workdir, exist_ok=True)
  args = config_args(sys.argv[1:])
  extra, report_offset = selection_overrides(config, _SELECTION.value)
  mebert = run_mebert(args, extra, os.path.join(workdir, "mebert"), report_offset)
  peer = run_peer(args, extra, os.path.join(workdir, "peer.json"), report_offset,
                  _SAME_START.value)
  metric = str(config.early_stopping.metric)
  result = {"selection": _SELECTION.value, "metric": metric, "mebert": mebert, "peer": peer,
            "headline": {side: headline(r, side, metric, _SELECTION.value)
                         for side, r in (("mebert", mebert), ("peer", peer))},
            "command": "python -m mebert.bench.finetune_compare " + " ".join(
                shlex.quote(a) for a in sys.argv[1:])}
  with open(os.path.join(workdir, "compare.json"), "w", encoding="utf-8") as f:
    json.dump(result, f, indent=2, sort_keys=True, default=str)
  print(table(result))


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
