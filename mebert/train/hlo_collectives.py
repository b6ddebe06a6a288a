"""The collectives of a compiled (optimized, SPMD-partitioned) HLO module and their bytes per step.

Read from `compiled.as_text()`: every all-gather, reduce-scatter, all-reduce, all-to-all and
collective-permute (sync or async "-start"), the size of its full buffer (the gathered result, the
unscattered operand, the reduced array), the size of its device group, and how many times a step
runs it: a collective inside a while loop (scanned layers, gradient-accumulation micro-batches) runs
once per iteration, which XLA's own cost analysis does not count; the trip count is read from the
loop's condition (`i < N`, as jax lowers scan and fori_loop).

Traffic per device is what a ring (or torus) algorithm must send at least, for group size n and a
buffer of B bytes: all-gather and reduce-scatter (n-1)/n * B, all-reduce 2(n-1)/n * B (a
reduce-scatter then an all-gather), all-to-all (n-1)/n * B, collective-permute B.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import re

KINDS = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")
_ITEMSIZE = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4,
             "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16,
             "f8e4m3fn": 1, "f8e5m2": 1, "s4": 0.5, "u4": 0.5}
_ARRAY = re.compile(r"\b(" + "|".join(_ITEMSIZE) + r")\[([\d,]*)\]")
_HEADER = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s*\(.*\{\s*$")
# One instruction: (name, result type, opcode, operands and attributes).
OP = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*?)\s+([\w\-]+)\((.*)$")


@dataclasses.dataclass(frozen=True)
class Collective:
  kind: str  # one of KINDS
  name: str  # the HLO instruction
  dtype: str
  shape: tuple[int, ...]  # the largest array of the op: the full (gathered / unscattered) buffer
  bytes: int  # of all arrays of that buffer (a combined collective carries several)
  group_size: int
  runs_per_step: int  # 1, or the trip count(s) of the loops around it
  op_name: str  # jax's name of the source operation (metadata), "" if none

  @property
  def traffic_bytes(self) -> float:
    """Bytes one device sends per run (ring lower bound); see the module docstring."""
    n = max(self.group_size, 1)
    if self.kind == "collective-permute":
      return float(self.bytes)
    factor = 2 * (n - 1) / n if self.kind == "all-reduce" else (n - 1) / n
    return factor * self.bytes


def array_sizes(type_text: str) -> list[tuple[str, tuple[int, ...], float]]:
  """(dtype, shape, bytes) of each array an HLO type names."""
  out = []
  for dtype, dims in _ARRAY.findall(type_text):
    shape = tuple(int(d) for d in dims.split(",") if d)
    out.append((dtype, shape, math.prod(shape) * _ITEMSIZE[dtype]))
  return out


def _group_size(attrs: str, num_devices: int) -> int:
  """From replica_groups in any of XLA's spellings: {{0,1},{2,3}}, [2,4]<=[8] (iota: groups of the
  last size), or mesh['x'=2,'y'=4] {'y'} (named mesh axes)."""
  match = re.search(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}", attrs)
  if match:
    sizes = {k.strip("' "): int(v) for k, v in re.findall(r"'?([\w]+)'?=(\d+)", match.group(1))}
    names = [n.strip("' ") for n in match.group(2).split(",") if n.strip("' ")]
    return math.prod(sizes[n] for n in names) if names else num_devices
  match = re.search(r"replica_groups=\[([\d,]+)\]<=", attrs)
  if match:
    return int(match.group(1).split(",")[-1])
  match = re.search(r"replica_groups=\{\{([\d,]*)\}", attrs)
  if match:
    return len([x for x in match.group(1).split(",") if x])
  match = re.search(r"source_target_pairs=", attrs)
  return 2 if match else num_devices  # replica_groups={} means every device


def split_computations(hlo_text: str) -> dict[str, list[str]]:
  """{computation name: its instruction lines}, and "__entry__": [the entry computation's name]."""
  computations, current, entry = {}, None, None
  for line in hlo_text.splitlines():
    header = _HEADER.match(line)
    if header and not line.startswith(" "):
      current = header.group(1)
      computations[current] = []
      if line.startswith("ENTRY"):
        entry = current
    elif line.rstrip() == "}":
      current = None
    elif current is not None:
      if line.startswith(" ") or not computations[current]:
        computations[current].append(line)
      else:  # a Mosaic kernel's backend_config spans lines: continue its instruction
        computations[current][-1] += line
  computations["__entry__"] = [entry] if entry else []
  return computations


def trip_count(condition: list[str]) -> int | None:
  """N of a loop condition `i < N` with N a constant (how jax lowers scan / fori_loop)."""
  if not any("direction=LT" in line for line in condition):
    return None
  constants = [int(m.group(1)) for line in condition
               for m in [re.search(r"\bs32\[\][^=]*constant\((-?\d+)\)", line)] if m]
  return constants[0] if len(constants) == 1 else None


def runs_per_step(computations: dict[str, list[str]]) -> tuple[dict[str, int], list[str]]:
  """How many times a step runs each computation, and the loops whose trip count was unreadable."""
  runs: dict[str, int] = {}
  unknown: list[str] = []
  entry = computations["__entry__"]
  stack = [(entry[0], 1)] if entry else []
  while stack:
    name, times = stack.pop()
    if name not in computations or runs.get(name, 0) >= times:
      continue
    runs[name] = times
    for line in computations[name]:
      loop = re.search(r"\bwhile\(.*condition=%?([\w.\-]+),\s*body=%?([\w.\-]+)", line)
      if loop:
        trips = trip_count(computations.get(loop.group(1), []))
        if trips is None:
          unknown.append(loop.group(2))
        stack.append((loop.group(2), times * (trips or 1)))
        continue
      for callee in re.findall(r"(?:calls|to_apply|body|condition)=%?([\w.\-]+)", line):
        stack.append((callee, times))
      for group in re.findall(r"(?:branch_computations|called_computations)=\{([^}]*)\}", line):
        for callee in group.split(","):
          stack.append((callee.strip().lstrip("%"), times))
  return runs, unknown


def collectives(hlo_text: str, num_devices: int) -> tuple[list[Collective], list[str]]:
  """(every collective op of the module, the loops whose trip count was unreadable: counted
  once)."""
  computations = split_computations(hlo_text)
  runs, unknown = runs_per_step(computations)
  found = []
  for comp, lines in computations.items():
    if comp == "__entry__":
      continue
    for line in lines:
      op = OP.match(line)
      if not op:
        continue
      name, type_text, opcode, rest = op.groups()
      kind = opcode[:-len("-start")] if opcode.endswith("-start") else opcode
      if kind not in KINDS:
        continue
      arrays = array_sizes(type_text)
      if not arrays:
        continue
      if opcode.endswith("-start") and len(arrays) > 1 and kind != "all-reduce":
        arrays = arrays[len(arrays) // 2:]  # (operands, results): count the results
      if kind == "reduce-scatter":
        size = _group_size(rest, num_devices)
        arrays = [(d, s, b * size) for d, s, b in arrays]  # the unscattered operand
      dtype, shape, _ = max(arrays, key=lambda a: a[2])
      meta = re.search(r'op_name="([^"]*)"', rest)
      found.append(Collective(kind, name, dtype, shape, int(sum(a[2] for a in arrays)),
                              _group_size(rest, num_devices), runs.get(comp, 1),
                              meta.group(1) if meta else ""))
  return found, unknown


def summarize(found: list[Collective]) -> dict:
  """{kind: {"ops", "bytes_per_step", "traffic_bytes_per_step"}} per device, over KINDS."""
  out = {kind: collections.Counter() for kind in KINDS}
  for c in found:
    out[c.kind]["ops"] += c.runs_per_step
    out[c.kind]["bytes_per_step"] += c.bytes * c.runs_per_step
    out[c.kind]["traffic_bytes_per_step"] += c.traffic_bytes * c.runs_per_step
  return {kind: {k: (int(v) if k != "traffic_bytes_per_step" else float(v))
                 for k, v in counts.items()} or {"ops": 0, "bytes_per_step": 0,
                                                 "traffic_bytes_per_step": 0.0}
          for kind, counts in out.items()}
