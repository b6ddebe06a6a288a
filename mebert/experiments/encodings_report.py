"""The encodings ablation's table and plot, from the runs' own files.

  python -m mebert.experiments.encodings_report --runs=runs/enc --out=docs

Reads, for every variant folder under --runs: config.json (the resolved config of the training run),
metrics.jsonl (step time), eval_step_<N>.json (the training length), eval_step_<N>_len<L>.json
(`--mode=eval --config.data.seq_len=L`) and eval_len<L>_error.json (a length the encoding cannot
represent). Writes <out>/encodings_table.md and <out>/encodings.png (MLM accuracy against eval
length), and replaces the table between the markers in <out>/encodings.md when that file has them.
"""

from __future__ import annotations

import importlib.util
import json
import pathlib
import re
import statistics

from absl import app, flags

CONFIG = pathlib.Path(__file__).resolve().parents[2] / "configs" / "experiments" / "encodings.py"
BEGIN, END = "<!-- encodings-table:begin -->", "<!-- encodings-table:end -->"
_EVAL_LEN = re.compile(r"eval_step_(\d+)_len(\d+)\.json$")
_ERROR_LEN = re.compile(r"eval_len(\d+)_error\.json$")


def load_config_module():
  """configs/experiments/encodings.py as a module (its VARIANTS and get_config)."""
  spec = importlib.util.spec_from_file_location("encodings_config", CONFIG)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _read_json(path: pathlib.Path):
  return json.loads(path.read_text())


def count_parameters(config: dict, workdir: pathlib.Path) -> int:
  """Parameters of the pretraining model (tied decoder counted once), from shapes only."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from mebert.model.config import ModelConfig  # pylint: disable=g-import-not-at-top
  from mebert.model.pretraining import BertForPreTraining  # pylint: disable=g-import-not-at-top

  model = dict(config["model"])
  if not model.get("vocab_size"):
    from mebert.data.tokenizer import load_tokenizer  # pylint: disable=g-import-not-at-top

    vocab = config["data"].get("vocab") or str(workdir / "vocab" / "spm.model")
    model["vocab_size"] = load_tokenizer(vocab).vocab_size
  cfg = ModelConfig.from_dict(model)
  ids = jax.ShapeDtypeStruct((1, int(config["data"]["seq_len"])), jnp.int32)
  shapes = jax.eval_shape(BertForPreTraining(cfg).init, jax.random.key(0), ids)["params"]
  import flax.linen as nn  # pylint: disable=g-import-not-at-top

  return int(sum(x.size for x in jax.tree.leaves(nn.unbox(shapes))))


def step_time_ms(workdir: pathlib.Path) -> float | None:
  """Train step time: the side-by-side measurement (step_time.json, written by
  mebert.experiments.encodings) when there is one, else the median over the training run's log
  windows after the first (which includes compilation)."""
  timed = workdir / "step_time.json"
  if timed.exists():
    return float(_read_json(timed)["median_ms"])
  rates = []
  for line in (workdir / "metrics.jsonl").read_text().splitlines():
    record = json.loads(line)
    if record.get("split") == "train" and record.get("steps_per_s"):
      rates.append((record["step"], record["steps_per_s"]))
  rates = [r for _, r in sorted(dict(rates).items())]  # a resumed run rewrites the steps it redoes
  rates = rates[1:] or rates
  return 1000.0 / statistics.median(rates) if rates else None


def read_run(workdir: pathlib.Path, count_params: bool = True) -> dict:
  """One variant's row: its model keys, parameters, step time and eval results by length."""
  config = _read_json(workdir / "config.json")
  steps, seq_len = int(config["train"]["num_steps"]), int(config["data"]["seq_len"])
  evals, errors = {}, {}
  final = workdir / f"eval_step_{steps}.json"
  if final.exists():
    evals[seq_len] = _read_json(final)
  for path in workdir.iterdir():
    if (m := _EVAL_LEN.match(path.name)) and int(m.group(1)) == steps:
      evals[int(m.group(2))] = _read_json(path)
    elif m := _ERROR_LEN.match(path.name):
      errors[int(m.group(1))] = _read_json(path)["error"]
  return {"name": workdir.name, "model": config["model"], "seq_len": seq_len, "steps": steps,
          "batch_size": int(config["train"]["batch_size"]),
          "parameters": count_parameters(config, workdir) if count_params else None,
          "step_ms": step_time_ms(workdir), "evals": evals, "errors": errors}


def describe(model: dict) -> str:
  encoding = model.get("position_encoding", "learned")
  parts = ["no positions" if encoding == "none" else f"{encoding} positions"]
  if model.get("encoding_fusion", "sum") != "sum":
    parts.append(f"{model['encoding_fusion']} fusion")
  if not model.get("use_segment_embeddings", True):
    parts.append("no segments")
  if model.get("pre_layer_norm"):
    parts.append("pre-LN")
  if model.get("hidden_act", "gelu") != "gelu":
    parts.append(model["hidden_act"].replace("geglu", "GeGLU"))
  if not model.get("use_bias", True):
    parts.append("no biases")
  if model.get("local_attention_window", 0):
    every = model.get("global_attention_every", 1)
    pattern = "every layer" if every == 0 else f"global every {every}"
    parts.append(f"local window {model['local_attention_window']} ({pattern})")
  return ", ".join(parts)


def cannot_extrapolate(row: dict, length: int) -> bool:
  from mebert.model import positions  # pylint: disable=g-import-not-at-top

  cls = positions.REGISTRY[row["model"].get("position_encoding", "learned")]
  return bool(getattr(cls, "bounded_length", False)) and length > int(
      row["model"]["max_position_embeddings"])


def lengths_of(rows: list[dict]) -> list[int]:
  return sorted({n for r in rows for n in list(r["evals"]) + list(r["errors"])})


def markdown_table(rows: list[dict]) -> str:
  lengths = lengths_of(rows)
  base = rows[0]["seq_len"] if rows else 0
  head = ["variant", "encodings and block", "parameters", "step (ms)"] + [
      f"MLM acc @{n} ({n // base if base and n % base == 0 else n / base:g}x)" for n in lengths]
  lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 2 + ["--:"] * (len(head) - 2)) + "|"]
  for r in rows:
    cells = [f"`{r['name']}`", describe(r["model"]),
             f"{r['parameters']:,}" if r["parameters"] is not None else "?",
             f"{r['step_ms']:.0f}" if r["step_ms"] is not None else "?"]
    for n in lengths:
      if n in r["evals"]:
        cells.append(f"{r['evals'][n]['mlm_accuracy']:.4f}")
      elif n in r["errors"] or cannot_extrapolate(r, n):
        cells.append("n/a (table)")
      else:
        cells.append("missing")
    lines.append("| " + " | ".join(cells) + " |")
  baseline = {}
  for r in rows:
    for n, e in r["evals"].items():
      baseline.setdefault(n, e.get("most_frequent_token_accuracy"))
  if baseline:
    cells = ["always the most frequent token", "", "", ""] + [
        f"{baseline[n]:.4f}" if baseline.get(n) is not None else "" for n in lengths]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def plot(rows: list[dict]) -> bytes:
  """The MLM accuracy of each variant against the eval length (log2 axis), with the
  most-frequent-token baseline dashed: a 900x560 PNG drawn by matplotlib (Agg, no display)."""
  import io  # pylint: disable=g-import-not-at-top

  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  lengths = lengths_of(rows)
  bounded = [r["name"] for r in rows if any(cannot_extrapolate(r, n) for n in lengths)]
  baseline = {}
  for r in rows:
    for n, e in r["evals"].items():
      if e.get("most_frequent_token_accuracy") is not None:
        baseline.setdefault(n, e["most_frequent_token_accuracy"])
  first = rows[0] if rows else {"seq_len": 0, "steps": 0, "batch_size": 0}
  fig, ax = plt.subplots(figsize=(9, 5.6), dpi=100)
  for r in rows:
    points = sorted((n, e["mlm_accuracy"]) for n, e in r["evals"].items())
    ax.plot([n for n, _ in points], [a for _, a in points], marker="o", label=r["name"])
  if baseline:
    points = sorted(baseline.items())
    ax.plot([n for n, _ in points], [a for _, a in points], linestyle="--", color="grey",
            label="most frequent token")
  ax.set_xscale("log", base=2)
  if lengths:
    ax.set_xticks(lengths, [str(n) for n in lengths])
  ax.set_xlabel("eval sequence length (tokens)")
  ax.set_ylabel("mlm accuracy")
  ax.set_title(f"mlm accuracy by eval length (trained at {first['seq_len']} tokens, "
               f"{first['steps']} steps x {first['batch_size']})")
  ax.grid(alpha=0.3)
  ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize="small")
  if bounded:
    fig.text(0.01, 0.01, f"{', '.join(bounded)}: a learned position table, no eval past its rows",
             fontsize="small")
  fig.tight_layout()
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=100)
  plt.close(fig)
  return buffer.getvalue()


def order_rows(rows: list[dict], variants: list[str] | None) -> list[dict]:
  if not variants:
    return sorted(rows, key=lambda r: r["name"])
  rank = {v: i for i, v in enumerate(variants)}
  return sorted((r for r in rows if r["name"] in rank), key=lambda r: rank[r["name"]])


def write_report(runs: pathlib.Path, out: pathlib.Path, variants: list[str] | None = None) -> str:
  runs, out = pathlib.Path(runs), pathlib.Path(out)
  rows = [read_run(d) for d in sorted(runs.iterdir()) if (d / "config.json").exists()]
  if not variants:  # the config's own order when the runs are the ablation's
    try:
      variants = [v for v in load_config_module().VARIANTS if any(r["name"] == v for r in rows)]
      variants += sorted(r["name"] for r in rows if r["name"] not in variants)
    except (OSError, ImportError):
      variants = None
  rows = order_rows(rows, variants)
  if not rows:
    raise FileNotFoundError(f"no run (a folder with config.json) under {runs}")
  table = markdown_table(rows)
  out.mkdir(parents=True, exist_ok=True)
  (out / "encodings_table.md").write_text(table)
  (out / "encodings.png").write_bytes(plot(rows))
  doc = out / "encodings.md"
  if doc.exists():
    text = doc.read_text()
    if BEGIN in text and END in text:
      head, rest = text.split(BEGIN, 1)
      doc.write_text(head + BEGIN + "\n" + table + END + rest.split(END, 1)[1])
  return table


def main(argv):
  del argv
  print(write_report(pathlib.Path(flags.FLAGS.runs), pathlib.Path(flags.FLAGS.out)), end="")


if __name__ == "__main__":
  # Flags only when run as a program: the ablation driver imports this module with flags of its own.
  flags.DEFINE_string("runs", "runs/enc", "Folder with one workdir per variant.")
  flags.DEFINE_string("out", "docs", "Where encodings_table.md and encodings.png go.")
  app.run(main)
