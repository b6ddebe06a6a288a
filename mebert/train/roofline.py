"""A roofline lower bound on a compiled train step's time on a TPU chip, and what it implies.

The step cannot be faster than any of: its FLOPs at the chip's bf16 peak, its HBM traffic at the
HBM bandwidth, or its collectives' traffic at the ICI bandwidth; with perfect overlap it takes the
largest of the three. So tokens/s per chip and MFU computed from that time are upper bounds: what
the recipe cannot beat on that slice, not what it will reach. (The compute and ICI terms are
strict; the HBM traffic is mebert.train.hlo_traffic's estimate, which assumes no reuse of on-chip
memory between instructions, so the HBM term can overstate.)
MFU here is useful MFU: the analytic useful FLOPs (mebert.bench.flops), not the compiled ones, over
the chip's peak, so recomputation and dense heads lower it.
"""

from __future__ import annotations

from mebert.parallel.tpu_slices import Chip


def bound(chip: Chip, *, flops_per_chip: float, hbm_bytes_per_chip: float,
          ici_bytes_per_chip: float, useful_flops_per_step: float, tokens_per_step: int,
          num_chips: int, num_steps: int) -> dict:
  times = {
      "compute_s": flops_per_chip / chip.bf16_flops_per_s,
      "hbm_s": hbm_bytes_per_chip / chip.hbm_bytes_per_s,
      "ici_s": ici_bytes_per_chip / chip.ici_bytes_per_s,
  }
  step = max(times.values())
  out = dict(times)
  out["step_time_lower_bound_s"] = step
  out["bound_by"] = max(times, key=times.get)[:-2]
  if step > 0:
    out["tokens_per_s_per_chip_upper_bound"] = tokens_per_step / num_chips / step
    out["useful_mfu_upper_bound"] = useful_flops_per_step / num_chips / step / chip.bf16_flops_per_s
    out["days_lower_bound"] = num_steps * step / 86400
  return out


def chip_table() -> str:
  """The chip facts as a Markdown table, each row with its source (docs/tpu.md carries it)."""
  from mebert.parallel.tpu_slices import CHIPS

  rows = ["| chip | HBM | bf16 peak | HBM bandwidth | ICI (bidirectional, per chip) | "
          "TensorCores per chip | chips per host | vCPUs per host | source |",
          "|---|---|---|---|---|---|---|---|---|"]
  for c in CHIPS.values():
    hbm = (f"{c.hbm_bytes / 2**30:.0f} GiB" if c.hbm_bytes % 2**30 == 0
           else f"{c.hbm_bytes / 1e9:.0f} GB")
    rows.append(f"| {c.generation} | {hbm} | {c.bf16_flops_per_s / 1e12:.0f} TFLOP/s | "
                f"{c.hbm_bytes_per_s / 1e9:.0f} GB/s | {c.ici_bytes_per_s / 1e9:.0f} GB/s | "
                f"{c.cores_per_chip} | {c.chips_per_host} | {c.host_vcpus or 'not stated'} | "
                f"{c.source} |")
  return "\n".join(rows)
