"""The time-to-quality benchmark's curves: every checkpoint of both sides through the one
evaluator, the time each side needs to reach the peer's final accuracy, the plot and the table."""

from __future__ import annotations

import json
import os

import numpy as np

from mebert.bench import mlm_eval


def export_mebert(workdir: str, steps: list[int], out_root: str) -> dict[int, str]:
  """Each checkpoint as a Hugging Face folder (the code of `python -m mebert.interop export-hf`);
  the last one through the parity gate (mebert and transformers agree on real sentences)."""
  from mebert.interop.workdir import export_workdir  # pylint: disable=g-import-not-at-top

  folders = {}
  for step in steps:
    folder = os.path.join(out_root, str(step))
    if not os.path.isfile(os.path.join(folder, "model.safetensors")):
      export_workdir(workdir, folder, step=step, parity=step == steps[-1])
    folders[step] = folder
  return folders


def evaluate_points(points: list[dict], folders: dict[int, str], eval_set: dict,
                    cache_path: str) -> list[dict]:
  """points (step, train_s) with the held-out mlm_accuracy / mlm_loss of each step's folder;
  results are kept in cache_path, so a rerun evaluates only what is new."""
  cache = {}
  if os.path.exists(cache_path):
    with open(cache_path, encoding="utf-8") as f:
      cache = json.load(f)
  out = []
  for p in points:
    folder = folders[p["step"]]
    if folder not in cache:
      cache[folder] = mlm_eval.evaluate_folder(folder, eval_set)
      with open(cache_path, "w", encoding="utf-8") as f:
        json.dump(cache, f, indent=2)
    out.append({**p, **cache[folder]})
  return out


def time_to_reach(curve: list[dict], target: float) -> float | None:
  """The training seconds at which a curve first reaches `target` accuracy, interpolated linearly
  between the checkpoints around the crossing (the first checkpoint's own time if it is already
  there: nothing is assumed before it); None if it never does."""
  prev = None
  for p in curve:
    if p["mlm_accuracy"] >= target:
      if prev is None:
        return float(p["train_s"])
      frac = (target - prev["mlm_accuracy"]) / (p["mlm_accuracy"] - prev["mlm_accuracy"])
      return float(prev["train_s"] + frac * (p["train_s"] - prev["train_s"]))
    prev = p
  return None


def compare(curves: dict[str, list[dict]]) -> dict:
  """The peer's final accuracy, when each side first reaches it, and mebert's time over the
  peer's (the benchmark's headline: lower is better; the goal is <= 0.40)."""
  target = curves["peer"][-1]["mlm_accuracy"]
  t_mebert, t_peer = time_to_reach(curves["mebert"], target), time_to_reach(curves["peer"], target)
  return {"peer_final_accuracy": target, "mebert_time_to_peer_final_s": t_mebert,
          "peer_time_to_peer_final_s": t_peer,
          "time_ratio": t_mebert / t_peer if t_mebert is not None and t_peer else None,
          "mebert_final_accuracy": curves["mebert"][-1]["mlm_accuracy"],
          "mebert_final_loss": curves["mebert"][-1]["mlm_loss"],
          "peer_final_loss": curves["peer"][-1]["mlm_loss"]}


def plot(curves: dict[str, list[dict]], comparison: dict, path: str, title: str) -> None:
  """Held-out masked-token accuracy and loss against training seconds, both sides (PNG)."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, (acc, loss) = plt.subplots(1, 2, figsize=(11, 4.2))
  styles = {"mebert": ("mebert (python -m mebert.train)", "tab:blue"),
            "peer": ("Hugging Face transformers (PyTorch)", "tab:orange")}
  for side, (label, color) in styles.items():
    xs = [p["train_s"] / 60 for p in curves[side]]
    acc.plot(xs, [p["mlm_accuracy"] for p in curves[side]], "o-", color=color, label=label, ms=3)
    loss.plot(xs, [p["mlm_loss"] for p in curves[side]], "o-", color=color, label=label, ms=3)
  target = comparison["peer_final_accuracy"]
  acc.axhline(target, color="gray", lw=0.8, ls="--", label="the peer's final accuracy")
  for key, color in (("mebert_time_to_peer_final_s", "tab:blue"),
                     ("peer_time_to_peer_final_s", "tab:orange")):
    if comparison[key] is not None:
      acc.axvline(comparison[key] / 60, color=color, lw=0.8, ls=":")
  acc.set(xlabel="training time (minutes)", ylabel="held-out masked-token accuracy")
  loss.set(xlabel="training time (minutes)", ylabel="held-out masked-token loss")
  ratio = comparison["time_ratio"]
  acc.set_title("time to the peer's final accuracy: "
                + (f"mebert {ratio:.3f}x the peer's" if ratio is not None else "not reached"),
                fontsize=9)
  acc.legend(fontsize=8, loc="lower right")
  acc.grid(alpha=0.3)
  loss.grid(alpha=0.3)
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def table(result: dict) -> str:
  """The printed summary: one row per side, then the ratio (and SST-2 when run)."""
  def f(x, digits=4):
    return "-" if x is None else f"{x:,.{digits}f}"

  c = result["comparison"]
  lines = [f"time to quality, {result['model']} from scratch, budget {result['budget_s']:.0f} s "
           f"per side, held-out set of {result['eval_predictions']} masked tokens",
           f"{'':8s} {'steps':>7s} {'train s':>8s} {'checkpoints':>11s} {'final acc':>9s} "
           f"{'final loss':>10s} {'s to peer final':>15s} {'SST-2 last':>10s}"]
  for side in ("mebert", "peer"):
    run, curve = result["runs"][side], result["curves"][side]
    sst2 = (result.get("sst2") or {}).get(side) or {}
    lines.append(f"{side:8s} {run['steps']:>7,d} {f(run['train_s'], 0):>8s} {len(curve):>11d} "
                 f"{f(curve[-1]['mlm_accuracy']):>9s} {f(curve[-1]['mlm_loss']):>10s} "
                 f"{f(c[f'{side}_time_to_peer_final_s'], 0):>15s} "
                 f"{f(sst2.get('last_accuracy')):>10s}")
  ratio = c["time_ratio"]
  lines.append("mebert's time to the peer's final accuracy / the peer's: "
               + (f"{ratio:.3f} (goal <= 0.40)" if ratio is not None
                  else "mebert did not reach it in the budget"))
  return "\n".join(lines)


def load_eval_set(path: str) -> dict[str, np.ndarray]:
  with np.load(path) as data:
    return {k: data[k] for k in data.files}
