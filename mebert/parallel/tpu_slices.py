"""Cloud TPU slices by name, their chips' public specifications, and compile-only devices for them.

`--config.compile.target=tpu:v5p-8` compiles for a slice that is not attached: libtpu (the TPU
compiler, `pip install -r requirements-tpu.txt`) describes the slice's topology and hands out
compile-only devices (`jax.experimental.topologies.get_topology_desc`), over which the trainer
builds its mesh as it would on the slice itself.

Slice names follow Cloud TPU's accelerator types, whose number counts different things by
generation (cloud.google.com/tpu/docs/v4, /v5p: "--accelerator-type ... v5p-32 specifies a v5p TPU
slice with 32 TensorCores (16 chips)"; /v5e and /v6e: "v$VERSION_NUMBER-$CHIP_COUNT"):
  v4-N, v5p-N     N TensorCores, 2 per chip: N/2 chips (v5p-8 = 4 chips on one host);
  v5e-N, v6e-N    N chips, 1 TensorCore each (v5e-256 = 256 chips). v5litepod-N = v5e-N.
On v4 and v5p JAX runs the chip's two TensorCores as one device (megacore), so a slice has one
device per chip on every generation, and "per device" in the compile report means per chip.
"""

from __future__ import annotations

import dataclasses
import glob
import math
import os
import re

# Where each chip fact comes from (the Cloud TPU system architecture pages, read in 2026).
SOURCES = {
    "v4": "https://cloud.google.com/tpu/docs/v4",
    "v5p": "https://cloud.google.com/tpu/docs/v5p",
    "v5e": "https://cloud.google.com/tpu/docs/v5e",
    "v6e": "https://cloud.google.com/tpu/docs/v6e",
}
REQUIREMENT = "pip install -r requirements-tpu.txt"


@dataclasses.dataclass(frozen=True)
class Chip:
  """One TPU chip's public specifications (units: bytes, FLOP/s, bytes/s)."""

  generation: str
  device_kind: str  # what jax's Device.device_kind says
  topology_prefix: str  # libtpu's name in "v5p:2x2x1"
  name_counts: str  # what N in "v5p-N" counts: "cores" or "chips"
  cores_per_chip: int
  hbm_bytes: float
  bf16_flops_per_s: float
  hbm_bytes_per_s: float
  ici_bytes_per_s: float  # bidirectional, per chip
  chips_per_host: int  # per TPU VM (one JAX process) in multi-host slices
  host_vcpus: int | None  # vCPUs of that VM, where the page states it
  notes: str = ""

  @property
  def source(self) -> str:
    return SOURCES[self.generation]


GiB = 2**30
CHIPS = {
    "v4": Chip("v4", "TPU v4", "v4", "cores", 2, hbm_bytes=32 * GiB, bf16_flops_per_s=275e12,
               hbm_bytes_per_s=1200e9, ici_bytes_per_s=2 * 1.1e15 / 4096, chips_per_host=4,
               host_vcpus=None,
               notes="ICI not stated per chip: 2 x the pod's all-reduce bandwidth (1.1 PB/s) over "
                     "its 4096 chips, the rule that gives v5e's and v6e's stated figures"),
    "v5p": Chip("v5p", "TPU v5", "v5p", "cores", 2, hbm_bytes=95 * GiB, bf16_flops_per_s=459e12,
                hbm_bytes_per_s=2765e9, ici_bytes_per_s=1200e9, chips_per_host=4, host_vcpus=208),
    "v5e": Chip("v5e", "TPU v5 lite", "v5e", "chips", 1, hbm_bytes=16e9, bf16_flops_per_s=197e12,
                hbm_bytes_per_s=819e9, ici_bytes_per_s=400e9, chips_per_host=4, host_vcpus=112,
                notes="8-chip single-host VMs (v5e-8) have 224 vCPUs"),
    "v6e": Chip("v6e", "TPU v6 lite", "v6e", "chips", 1, hbm_bytes=32e9, bf16_flops_per_s=918e12,
                hbm_bytes_per_s=1638e9, ici_bytes_per_s=800e9, chips_per_host=4, host_vcpus=None,
                notes="multi-host slices use 4-chip VMs (ct6e-standard-4t); v6e-8: one 8-chip VM"),
}
ALIASES = {"v5litepod": "v5e", "v5lite": "v5e"}

# Chip grid of each slice, keyed by the number in its name (Cloud TPU's tables; v4's and v5p's
# 3D shapes are cores/2 chips, v5e's and v6e's 2D shapes are the name's chip count).
_SHAPES_3D = {8: (2, 2, 1), 16: (2, 2, 2), 32: (2, 2, 4), 64: (2, 4, 4), 128: (4, 4, 4),
              256: (4, 4, 8), 512: (4, 8, 8), 1024: (8, 8, 8), 2048: (8, 8, 16),
              4096: (8, 16, 16)}
_SHAPES_2D = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8), 128: (8, 16),
              256: (16, 16)}
SHAPES = {"v4": _SHAPES_3D,
          "v5p": {**_SHAPES_3D, 8192: (16, 16, 16), 12288: (16, 16, 24)},
          "v5e": _SHAPES_2D, "v6e": _SHAPES_2D}


@dataclasses.dataclass(frozen=True)
class Slice:
  """A named slice: its chip, chip grid and hosts."""

  name: str  # canonical, e.g. "v5p-8"
  chip: Chip
  shape: tuple[int, ...]  # chips per dimension

  @property
  def num_chips(self) -> int:
    return math.prod(self.shape)

  @property
  def host_bounds(self) -> tuple[int, int, int]:
    """Chips per host along each dimension: 2x2x1 (4-chip VMs), or the whole slice when it fits
    one VM (v5e-8 and v6e-8 are single 8-chip VMs; 1- and 4-chip slices are part of one)."""
    grid = tuple(self.shape) + (1,) * (3 - len(self.shape))
    if self.chip.name_counts == "chips" and self.num_chips <= 8:
      return grid
    return (2, 2, 1)

  @property
  def num_hosts(self) -> int:
    return max(1, self.num_chips // math.prod(self.host_bounds))

  @property
  def wrap(self) -> tuple[bool, bool, bool]:
    """Torus wrap-around links per dimension: v4/v5p slices of whole 4x4x4 cubes are 3D tori;
    v5e/v6e wrap a dimension of 16 chips (the full pod edge)."""
    if len(self.shape) == 3:
      torus = min(self.shape) >= 4
      return (torus, torus, torus)
    return tuple(d == 16 for d in self.shape) + (False,)

  @property
  def topology_name(self) -> str:
    return f"{self.chip.topology_prefix}:{'x'.join(map(str, self.shape))}"


def slice_names() -> list[str]:
  return [f"{gen}-{n}" for gen, shapes in SHAPES.items() for n in shapes]


def parse_target(target: str) -> Slice:
  """"tpu:v5p-8" (or "v5p-8") -> its Slice; an unknown name raises ValueError listing the valid
  ones."""
  name = target.strip()
  if name.startswith("tpu:"):
    name = name[len("tpu:"):]
  elif ":" in name:
    raise ValueError(f"compile.target={target!r}: only TPU slices can be targeted ('tpu:NAME', "
                     f"e.g. tpu:v5p-8); leave it empty to compile for this machine's devices")
  match = re.fullmatch(r"(v\w+?)-(\d+)", name.lower())
  gen = ALIASES.get(match.group(1), match.group(1)) if match else None
  if gen not in SHAPES or int(match.group(2)) not in SHAPES[gen]:
    raise ValueError(f"compile.target={target!r} is not a known TPU slice; valid: tpu:NAME with "
                     f"NAME one of {', '.join(slice_names())} (v5litepod-N = v5e-N; v4 and v5p "
                     "count TensorCores, 2 per chip; v5e and v6e count chips)")
  count = int(match.group(2))
  return Slice(f"{gen}-{count}", CHIPS[gen], SHAPES[gen][count])


def chip_for_device_kind(device_kind: str) -> Chip | None:
  """The chip facts of an attached TPU device ("TPU v5 lite" -> v5e), None for others."""
  for chip in CHIPS.values():
    if chip.device_kind == device_kind:
      return chip
  return None


class MissingTpuCompiler(RuntimeError):
  """libtpu (the TPU compiler) is not installed."""


def libtpu_installed() -> bool:
  path = os.environ.get("TPU_LIBRARY_PATH")
  if path and os.path.isfile(path):
    return True
  try:
    import libtpu  # noqa: F401  (the wheel jax[tpu] pins; it carries libtpu.so)
  except ImportError:
    return False
  return True


def _tpu_attached() -> bool:
  """Whether this machine has TPU chips (a TPU VM): their device files, as jax looks for them."""
  return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))


def compile_only_devices(target: Slice) -> list:
  """The slice's devices as libtpu describes them: enough to lower, shard and compile for, not to
  run on. Raises MissingTpuCompiler (saying what to install) without libtpu."""
  if not libtpu_installed():
    raise MissingTpuCompiler(
        f"compiling for tpu:{target.name} needs the TPU compiler, which comes with the libtpu "
        f"wheel: {REQUIREMENT}")
  if not _tpu_attached():
    # Off a TPU VM, libtpu asks the GCE metadata server about "this" host and prints warnings when
    # it finds none; the topology below is given in full, so say so up front. Compile-only use
    # touches no chip, so other processes may hold libtpu too (its lockfile would refuse them).
    for key, value in (("TPU_SKIP_MDS_QUERY", "1"), ("TPU_WORKER_ID", "0"),
                       ("TPU_WORKER_HOSTNAMES", "localhost"), ("ALLOW_MULTIPLE_LIBTPU_LOAD", "1"),
                       ("TPU_ACCELERATOR_TYPE", target.name.replace("v5e-", "v5litepod-"))):
      os.environ.setdefault(key, value)
  from jax.experimental import topologies

  megacore = target.chip.cores_per_chip > 1  # one device per chip, as JAX runs v4 and v5p
  topology = topologies.get_topology_desc(
      topology_name=target.topology_name, platform="tpu",
      chip_config_name="megacore" if megacore else "default",
      chips_per_host_bounds=target.host_bounds, num_slices=1, wrap=target.wrap)
  devices = list(topology.devices)
  if len(devices) != target.num_chips:
    raise RuntimeError(f"libtpu described tpu:{target.name} with {len(devices)} devices, expected "
                       f"{target.num_chips} (one per chip)")
  return devices
