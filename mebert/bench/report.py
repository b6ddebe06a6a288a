"""A markdown table of benchmark results: python -m mebert.bench.report RESULT.json [...]"""

from __future__ import annotations

import json
import sys


def _f(x, scale=1.0, digits=0, suffix=""):
  return "–" if x is None else f"{x * scale:,.{digits}f}{suffix}"


def _pct(x):
  return _f(x, 100, 1, "%")


def table(records: list[dict]) -> str:
  head = ("| case | batch | mebert tok/s (non-pad) | PyTorch tok/s (non-pad) | Flax tok/s (non-pad) | "
          "ratio | mebert useful FLOP util (vs best matmul) | PyTorch useful util | "
          "Flax useful util | "
          "mebert step / compile | mebert / PyTorch / Flax peak RSS |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|")
  rows = []
  for r in records:
    def tok(prefix):
      total, nonpad = r[f"{prefix}_tokens_per_s"], r[f"{prefix}_nonpad_tokens_per_s"]
      if total is None:
        return "–"
      return _f(total) if abs(total - nonpad) < 1e-6 * total else f"{_f(total)} ({_f(nonpad)})"
    rows.append(
        f"| {r['case']} | {r['batch_size']} x {r['seq_len']} | {tok('mebert')} | {tok('peer')} | "
        f"{tok('flax_peer')} | **{_f(r['ratio'], 1, 2)}x** {r.get('faster_peer') or ''} | "
        f"{_pct(r['mebert_useful_flop_util'])} "
        f"({_pct(r.get('mebert_useful_flop_util_vs_best_matmul'))}) | "
        f"{_pct(r['peer_useful_flop_util'])} | {_pct(r['flax_peer_useful_flop_util'])} | "
        f"{_f(r['mebert_step_time_s'], 1e3)} ms / {_f(r['mebert_compile_s'], 1, 0)} s | "
        f"{_f(r['mebert_peak_rss_mb'])} / {_f(r['peer_peak_rss_mb'])} / "
        f"{_f(r['flax_peer_peak_rss_mb'])} MB |")
  return "\n".join([head] + rows)


def main(argv=None) -> None:
  paths = (argv if argv is not None else sys.argv[1:])
  records = []
  for p in paths:
    with open(p) as f:
      records.append(json.load(f))
  print(table(records))
  for r in records:
    m = r["machine"]
    check = (r.get("peak_check") or {}).get("note", "")
    print(f"\n{r['case']}: peak {_f(r['peak_flops_per_s'], 1e-9, 1)} GFLOP/s ({r['peak_source']}); "
          f"best matmul {_f(r.get('best_matmul_flops_per_s'), 1e-9, 1)} GFLOP/s; {check}; "
          f"{m['nproc']} x {m['cpu_model']}; load {m['load_average']}; {m['date']}; `{r['command']}`")


if __name__ == "__main__":
  main()
