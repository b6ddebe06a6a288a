"""The scaling tables of BENCHMARKS.md: step time against sequence length and model size, and
per-device memory against mesh shape.

  # step time: one harness JSON per case (python -m mebert.bench --case=mini-256 --only-mebert ...)
  python -m mebert.bench.scaling --json-dir=DIR

  # memory: compiles (never runs) the train step on each mesh, here on 8 fake CPU devices
  python -m mebert.bench.scaling --memory --devices=8 --config=configs/pretrain/bert_base.py \\
      --mesh=8,1,1 --mesh=1,8,1 --mesh=1,2,4 --mesh=2,2,2

Step time: rows are model sizes, columns sequence lengths; each case keeps its size's tokens per
step (the batch shrinks as rows grow), so a column-to-column rise is what longer attention costs.
Several JSONs of one case: the run with the median step time is shown. Memory: per device, from
the compiled program (mebert.train.compile_report); temporaries follow the compiling platform's
scheduler, so a CPU compile approximates, but does not equal, an accelerator's.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import os
import sys

from mebert import host_memory
from mebert.model.config import bert_size

SIZES = ("tiny", "mini", "small", "medium", "base", "large")
_NEEDED = ("case", "seq_len", "batch_size", "model", "mebert_step_time_s", "mebert_tokens_per_s")


def _f(x, scale=1.0, digits=0, suffix=""):
  return "–" if x is None else f"{x * scale:,.{digits}f}{suffix}"


def size_name(model: dict) -> str:
  """'base' for bert-base's hidden/layers/heads/intermediate, else e.g. 'h384-l6'."""
  keys = ("hidden_size", "num_layers", "num_heads", "intermediate_size")
  for name in SIZES:
    if all(bert_size(name)[k] == model.get(k) for k in keys):
      return name
  return f"h{model.get('hidden_size')}-l{model.get('num_layers')}"


def load_records(json_dir: str) -> list[tuple[str, dict]]:
  """(path, record) of every harness JSON in the folder; a file that is not one names its key."""
  paths = sorted(glob.glob(os.path.join(json_dir, "*.json")))
  if not paths:
    raise ValueError(f"--json-dir={json_dir}: no *.json files")
  out = []
  for path in paths:
    with open(path) as f:
      record = json.load(f)
    missing = [k for k in _NEEDED if k not in record]
    if missing:
      raise ValueError(f"{path}: not a `python -m mebert.bench` result (no {missing[0]!r})")
    out.append((path, record))
  return out


def _median_run(records: list[dict]) -> dict:
  ok = sorted((r for r in records if r["mebert_step_time_s"]), key=lambda r: r["mebert_step_time_s"])
  return ok[(len(ok) - 1) // 2] if ok else records[0]


def step_time_table(records: list[dict]) -> str:
  """Markdown: sizes down, sequence lengths across; step ms / tokens/s / useful FLOP utilisation."""
  cells: dict[tuple[str, int], list[dict]] = {}
  for r in records:
    cells.setdefault((size_name(r["model"]), int(r["seq_len"])), []).append(r)
  lengths = sorted({length for _, length in cells})
  sizes = sorted({size for size, _ in cells},
                 key=lambda s: (SIZES.index(s) if s in SIZES else len(SIZES), s))
  compare = len(lengths) > 1  # the last column: time per token at the longest against the shortest
  head = ["| model | tokens / step | " + " | ".join(f"{n} tokens" for n in lengths) + " |"
          + (f" time per token, {lengths[-1]} vs {lengths[0]} |" if compare else ""),
          "|---|---|" + "---|" * (len(lengths) + compare)]
  rows = []
  for size in sizes:
    shown = {n: _median_run(cells[(size, n)]) for n in lengths if (size, n) in cells}
    tokens = sorted({r["batch_size"] * r["seq_len"] for r in shown.values()})
    parts = []
    for n in lengths:
      r = shown.get(n)
      if r is None:
        parts.append("–")
        continue
      runs = len(cells[(size, n)])
      parts.append(f"{_f(r['mebert_step_time_s'], 1e3)} ms, {_f(r['mebert_tokens_per_s'])} tok/s, "
                   f"{_f(r.get('mebert_useful_flop_util'), 100, 1, '%')} useful"
                   + (f" (median of {runs})" if runs > 1 else ""))
    first, last = shown.get(lengths[0]), shown.get(lengths[-1])
    ratio = None
    if first and last and first["mebert_tokens_per_s"] and last["mebert_tokens_per_s"]:
      ratio = first["mebert_tokens_per_s"] / last["mebert_tokens_per_s"]
    rows.append(f"| {size} | {' / '.join(f'{t:,}' for t in tokens)} | " + " | ".join(parts) + " |"
                + (f" {_f(ratio, 1, 2, 'x')} |" if compare else ""))
  return "\n".join(head + rows)


def provenance(paths_records: list[tuple[str, dict]]) -> str:
  lines = []
  for path, r in paths_records:
    m = r.get("machine") or {}
    lines.append(f"- {r['case']}: {m.get('nproc', '?')} x {m.get('cpu_model', '?')}, load "
                 f"{m.get('load_average')}, {m.get('date', '?')}; `{r.get('command', '?')}` "
                 f"({os.path.basename(path)})")
  return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# memory against mesh shape


def parse_mesh(text: str) -> tuple[int, int, int]:
  parts = text.replace("x", ",").split(",")
  if len(parts) != 3 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
    raise ValueError(f"--mesh={text!r}: expected DATA,FSDP,TENSOR (positive sizes), e.g. 2,2,2")
  return tuple(int(p) for p in parts)


def load_config(spec: str):
  """A config file with an optional ':ARG', as --config of mebert.train takes it."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise ValueError(f"--config={spec}: no such file")
  module_spec = importlib.util.spec_from_file_location("scaling_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def memory_reports(config, meshes, workdir: str = "/tmp/mebert-scaling",
                   compiler_options: dict | None = None) -> list[dict]:
  """compile_report's report for each (data, fsdp, tensor) mesh of the config."""
  from mebert.train import compile_report  # pylint: disable=g-import-not-at-top  (imports jax)

  reports = []
  for data, fsdp, tensor in meshes:
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = data, fsdp, tensor
    reports.append(compile_report.compile_and_report(config, workdir, compiler_options))
  return reports


def _mib(n) -> str:
  return "–" if n is None else f"{n / 2**20:,.1f}"


def memory_table(reports: list[dict]) -> str:
  head = ["| mesh (data x fsdp x tensor) | rows / device | params MiB / device | "
          "optimizer state MiB / device | params + opt MiB / device | step temporaries MiB / device "
          "| peak MiB / device (est.) | state sharded |",
          "|---|---|---|---|---|---|---|---|"]
  rows = []
  for r in reports:
    mesh = r["mesh"]
    rows_per_device = r["global_batch"] // (mesh["data"] * mesh["fsdp"])
    rows.append(f"| {mesh['data']} x {mesh['fsdp']} x {mesh['tensor']} | {rows_per_device} | "
                f"{_mib(r['param_bytes_per_device'])} | {_mib(r['opt_state_bytes_per_device'])} | "
                f"{_mib(r['state_bytes_per_device'])} | {_mib(r.get('temp_size_in_bytes'))} | "
                f"{_mib(r.get('peak_bytes_per_device_estimate'))} | "
                f"{r['state_sharding_factor']:.2f}x |")
  first = reports[0] if reports else None
  note = (f"\n\n{first['param_count']:,} parameters, global batch {first['global_batch']} x "
          f"{first['seq_len']}, {first['devices']} {first['platform']} devices; params + opt "
          f"unsharded {_mib(first['state_bytes_unsharded'])} MiB" if first else "")
  return "\n".join(head + rows) + note


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                               formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
  ap.add_argument("--json-dir", help="folder of `python -m mebert.bench` JSONs: the step-time table")
  ap.add_argument("--memory", action="store_true", help="compile on each --mesh: the memory table")
  ap.add_argument("--config", default="configs/pretrain/bert_base.py", help="--memory: config file")
  ap.add_argument("--mesh", action="append", default=[], metavar="DATA,FSDP,TENSOR")
  ap.add_argument("--batch-size", type=int, default=None, help="--memory: global batch (default: "
                  "the config's)")
  ap.add_argument("--devices", type=int, default=None,
                  help="--memory on CPU: this many fake CPU devices (set before JAX starts)")
  args = ap.parse_args(argv)
  host_memory.configure()  # before JAX starts: the opt-in host tuning (mebert/host_memory.py)
  if bool(args.json_dir) == bool(args.memory):
    raise SystemExit("error: give --json-dir=DIR (step-time table) or --memory (memory table)")
  try:
    if args.json_dir:
      paths_records = load_records(args.json_dir)
      print(step_time_table([r for _, r in paths_records]))
      print()
      print(provenance(paths_records))
      return
    meshes = [parse_mesh(m) for m in args.mesh] or [(8, 1, 1), (1, 8, 1), (1, 2, 4), (2, 2, 2)]
    config = load_config(args.config)
  except (OSError, ValueError) as e:
    raise SystemExit(f"error: {e}") from None
  if args.devices:
    import jax  # pylint: disable=g-import-not-at-top

    jax.config.update("jax_num_cpu_devices", args.devices)
  if args.batch_size:
    config.train.batch_size = args.batch_size
  print(memory_table(memory_reports(config, meshes)))
  print(f"\n`python -m mebert.bench.scaling {' '.join(sys.argv[1:] if argv is None else argv)}`")


if __name__ == "__main__":
  main()
