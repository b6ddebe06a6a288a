"""The CPU's float32 peak, fixed before a benchmark runs: cores x clock x FLOPs per cycle per core.

Read from the machine, never measured: utilisation divides by a figure no reading of the run can
move. Standard library only (the Flax peer's venv imports timing.py beside it by path).

  cores     physical cores this process may run on: its CPU affinity, over the threads per core
            ("siblings" / "cpu cores" in /proc/cpuinfo), since SMT siblings share one core's
            vector units.
  clock     the highest the cores may run at: cpufreq's cpuinfo_max_freq (the boost clock) when
            sysfs has it, because a peak must bound what the units can do, and a core boosting
            above a base clock would run "above the peak". Virtual machines often have no cpufreq;
            then /proc/cpuinfo's "cpu MHz" (a current or nominal clock, the TSC's under KVM), which
            can be below the boost clock: the source string says so.
  FLOP/cycle float32 FLOPs one core's vector units complete per cycle (an FMA counts 2), from the
            instruction-set flags and a table by vendor, family and model (`flops_per_cycle`).

A hypervisor may report another CPU model than the host's (QEMU's "EPYC-Genoa" model on a newer
host, for one) and a nominal clock: the figure is then wrong, and the harness's check (no matrix
product and no step of the run may exceed it) says so in the results. --cpu-flops-per-cycle and
--cpu-clock-ghz set the two factors by hand where the machine is known better than it reports.
"""

from __future__ import annotations

import dataclasses
import os

# float32 FLOPs per cycle per core of the vector units: (FMA pipes) x (fp32 lanes each) x 2.
# Sources: AMD's Software Optimization Guides for family 17h (Zen/Zen+: two 128-bit FMA pipes;
# Zen 2: two 256-bit), 19h (Zen 3: two 256-bit; Zen 4: AVX-512 executed on the same two 256-bit
# FMA pipes, so 512-bit instructions take two passes) and 1Ah (Zen 5: 512-bit datapaths, two FMA
# pipes, on desktop and server parts; the mobile parts keep 256-bit datapaths); Intel's
# Optimization Reference Manual (Haswell to Alder Lake cores: two 256-bit FMA units; Xeon Scalable
# Skylake-SP and later server cores with AVX-512: two 512-bit FMA units on Gold 6xxx/Platinum and
# on Ice Lake-SP and later, one on some Bronze/Silver/Gold 5xxx parts); Agner Fog's
# microarchitecture guide for the same. AMX (amx_tile) multiplies bf16/int8 only: not counted.


@dataclasses.dataclass(frozen=True)
class CpuPeak:
  flops_per_s: float | None  # None: the machine did not say enough
  cores: int
  clock_hz: float | None
  flops_per_cycle: int | None
  source: str  # how each factor was found, in words


def read_cpuinfo(path: str = "/proc/cpuinfo") -> dict[str, str]:
  """The first processor's fields of /proc/cpuinfo ({} where there is none)."""
  fields: dict[str, str] = {}
  try:
    with open(path, encoding="utf-8", errors="replace") as f:
      for line in f:
        if not line.strip():
          if fields:
            break
          continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
  except OSError:
    pass
  return fields


def flops_per_cycle(info: dict[str, str]) -> tuple[int | None, str]:
  """(float32 FLOPs per cycle per core, the FMA_TABLE row that gave it) from cpuinfo fields."""
  flags = set(info.get("flags", "").split())
  vendor = info.get("vendor_id", "")
  name = info.get("model name", "")
  try:
    family, model = int(info.get("cpu family", "-1")), int(info.get("model", "-1"))
  except ValueError:
    family, model = -1, -1
  avx512, fma = "avx512f" in flags, "fma" in flags and "avx2" in flags
  where = f"{vendor} family {family:#x} model {model:#x} ({name or 'no model name'})"
  if vendor == "AuthenticAMD":
    if family == 0x17:
      return (16, f"{where}: Zen/Zen+, 2 x 128-bit FMA") if model < 0x30 else (
          32, f"{where}: Zen 2, 2 x 256-bit FMA")
    if family == 0x19:
      return (32, f"{where}: Zen 4, AVX-512 on 2 x 256-bit FMA pipes") if avx512 else (
          32, f"{where}: Zen 3, 2 x 256-bit FMA")
    if family == 0x1A and avx512:
      return 64, f"{where}: Zen 5, 2 x 512-bit FMA"
  if vendor == "GenuineIntel" and avx512:
    if "Xeon" in name:
      return 64, f"{where}: Xeon with AVX-512, 2 x 512-bit FMA (1 on some Silver/5xxx parts)"
    return 32, f"{where}: client core with AVX-512, 1 x 512-bit FMA"
  if fma:
    return 32, f"{where}: FMA + AVX2, 2 x 256-bit FMA"
  if "avx" in flags:
    return 16, f"{where}: AVX without FMA, 1 x 256-bit multiply + 1 x 256-bit add"
  return None, f"{where}: no AVX/FMA flags known to the table"


def physical_cores(info: dict[str, str]) -> tuple[int, str]:
  """(physical cores this process may use, how it was counted)."""
  try:
    logical = len(os.sched_getaffinity(0))
  except (AttributeError, OSError):
    logical = os.cpu_count() or 1
  try:
    threads = max(1, int(info["siblings"]) // int(info["cpu cores"]))
  except (KeyError, ValueError, ZeroDivisionError):
    threads = 1
  cores = max(1, logical // threads)
  return cores, f"{logical} CPUs in this process's affinity / {threads} thread(s) per core"


def max_clock_hz(info: dict[str, str], cpu: int = 0) -> tuple[float | None, str]:
  """(clock in Hz, which clock): cpufreq's maximum if present, else cpuinfo's MHz."""
  path = f"/sys/devices/system/cpu/cpu{cpu}/cpufreq/cpuinfo_max_freq"
  try:
    with open(path) as f:
      return int(f.read().strip()) * 1e3, f"max clock from {path}"
  except (OSError, ValueError):
    pass
  try:
    mhz = float(info["cpu MHz"])
  except (KeyError, ValueError):
    return None, "no clock: no cpufreq in sysfs and no 'cpu MHz' in /proc/cpuinfo"
  hypervisor = " under a hypervisor (its nominal/TSC clock)" if "hypervisor" in info.get(
      "flags", "") else ""
  return mhz * 1e6, (f"'cpu MHz' of /proc/cpuinfo{hypervisor}: no cpufreq in sysfs, so possibly "
                     "below the boost clock")


def cpu_peak(flops_per_cycle_override: int | None = None,
             clock_ghz_override: float | None = None) -> CpuPeak:
  """The float32 peak of the CPUs this process may use; overrides replace a factor."""
  info = read_cpuinfo()
  cores, cores_src = physical_cores(info)
  if flops_per_cycle_override:
    per_cycle, per_cycle_src = int(flops_per_cycle_override), "--cpu-flops-per-cycle (given)"
  else:
    per_cycle, per_cycle_src = flops_per_cycle(info)
  if clock_ghz_override:
    clock, clock_src = float(clock_ghz_override) * 1e9, "--cpu-clock-ghz (given)"
  else:
    clock, clock_src = max_clock_hz(info)
  peak = cores * clock * per_cycle if clock and per_cycle else None
  clock_text = f"{clock / 1e9:.3f} GHz" if clock else "?"
  source = (f"{cores} cores ({cores_src}) x {clock_text} ({clock_src}) x "
            f"{per_cycle or '?'} fp32 FLOP/cycle ({per_cycle_src})")
  return CpuPeak(peak, cores, clock, per_cycle, source)
