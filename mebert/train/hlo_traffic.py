"""HBM traffic of a compiled TPU program, from its optimized HLO: the roofline's HBM term.

XLA's own cost analysis ("bytes accessed") adds up the operands and results of every instruction
wherever they live, including the asynchronous copies with which memory-space assignment moves
arrays between HBM and the chip's on-chip memory (VMEM, memory space S(1)), and the copied array
again where it is used. For a step whose optimizer update XLA streams through VMEM that counts the
optimizer state several times over: on BERT-base, tens of GB a step that the chip never moves.

Here each top-level instruction (a fusion as a whole, a custom call, a collective) reads its
operands from and writes its results to HBM, except for arrays in another memory space (S(1) and
up): a copy into or out of on-chip memory counts once, on its HBM side; a fusion parameter that
the fusion only slices (dynamic-slice, slice, gather; also through nested fusions, as a scanned
layer reads its weights) counts as the slices it reads, and a fusion that updates a buffer in
place (dynamic-update-slice at its root) writes the update, not the buffer. Instructions in loops
count once per iteration (hlo_collectives reads the trip counts), and a conditional (the step's
non-finite guard) as its costliest branch. This is still an estimate: it assumes no reuse from
on-chip memory between instructions, so real traffic can be lower.
"""

from __future__ import annotations

import re

from mebert.train.hlo_collectives import OP, array_sizes, split_computations, trip_count

# Instructions that move no data themselves (views, control flow, the ends of async pairs whose
# start is counted).
_NO_TRAFFIC = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "copy-done",
               "while", "conditional", "call", "after-all", "partition-id", "replica-id",
               "opt-barrier", "all-gather-done", "all-reduce-done", "collective-permute-done",
               "async-done", "async-update", "add-dependency"}
_SLICING = {"dynamic-slice", "slice", "gather"}
_FIRST_ARRAY = re.compile(r"\(\s*([a-z]+\d*\[[\d,]*\](?:\{[^}]*\})?)")
_PARAM = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*?)\s+parameter\((\d+)\)")


def _hbm_bytes(type_text: str) -> float:
  """Bytes of the arrays of an HLO type that live in HBM (no S(n) memory-space annotation)."""
  total = 0.0
  for match in re.finditer(r"\b[a-z]+\d*\[[\d,]*\]\{[^}]*\}|\b[a-z]+\d*\[[\d,]*\]", type_text):
    if re.search(r"S\(\d+\)", match.group(0)):
      continue
    total += sum(a[2] for a in array_sizes(match.group(0)))
  return total


def _operand_names(rest: str) -> list[str]:
  depth, end = 1, 0
  for end, ch in enumerate(rest):  # the operand list ends at the matching ")"
    depth += ch == "("
    depth -= ch == ")"
    if depth == 0:
      break
  return re.findall(r"%([\w.\-]+)", rest[:end])


def _fusion_io(computations: dict[str, list[str]], name: str,
               seen: dict | None = None) -> tuple[dict[int, float], float | None]:
  """For a fused computation: {parameter index: bytes actually read} for parameters that are only
  sliced (directly, or by a nested fusion that only slices them), and the bytes written when its
  root updates a buffer in place (else None)."""
  seen = {} if seen is None else seen
  if name in seen:
    return seen[name]
  params, users, types, root = {}, {}, {}, None
  for line in computations.get(name, []):
    p = _PARAM.match(line)
    if p:
      params[p.group(1)] = int(p.group(3))
      types[p.group(1)] = p.group(2)
      continue
    op = OP.match(line)
    if not op:
      continue
    result, type_text, opcode, rest = op.groups()
    types[result] = type_text
    operands = _operand_names(rest)
    callee = re.search(r"calls=%?([\w.\-]+)", rest) if opcode == "fusion" else None
    for i, operand in enumerate(operands):
      users.setdefault(operand, []).append((opcode, i, type_text, callee and callee.group(1)))
    if line.lstrip().startswith("ROOT"):
      root = (opcode, operands)
  sliced = {}
  for param, index in params.items():
    read = 0.0
    for opcode, i, type_text, callee in users.get(param, []) or [(None, None, None, None)]:
      if opcode in _SLICING and i == 0:
        read += _hbm_bytes(type_text)
      elif opcode == "fusion" and callee and i in _fusion_io(computations, callee, seen)[0]:
        read += _fusion_io(computations, callee, seen)[0][i]
      else:
        break
    else:
      sliced[index] = read
  written = None
  if root and root[0] == "dynamic-update-slice" and len(root[1]) > 1:
    buffer, update = root[1][0], root[1][1]
    if buffer in params:
      sliced[params[buffer]] = 0.0  # updated in place: not read
      written = _hbm_bytes(types.get(update, ""))
  seen[name] = (sliced, written)
  return sliced, written


def hbm_traffic(hlo_text: str) -> float:
  """Estimated HBM bytes one device reads and writes in one run of the module."""
  computations = split_computations(hlo_text)
  types = {}
  for lines in computations.values():
    for line in lines:
      op = _PARAM.match(line) or OP.match(line)
      if op:
        types[op.group(1)] = op.group(2)
  entry = computations["__entry__"]
  return _Counter(computations, types).traffic(entry[0]) if entry else 0.0


class _Counter:
  """Walks the computations from the entry: a while loop's body counts once per iteration, a
  conditional its costliest branch (one runs), a fusion as one instruction."""

  def __init__(self, computations: dict[str, list[str]], types: dict[str, str]):
    self.computations, self.types = computations, types
    self.fusions, self.done = {}, {}

  def traffic(self, comp: str) -> float:
    if comp not in self.done:
      self.done[comp] = 0.0  # a computation never calls itself; guards malformed text
      self.done[comp] = sum(self._instruction(line) for line in self.computations.get(comp, []))
    return self.done[comp]

  def _instruction(self, line: str) -> float:
    op = OP.match(line)
    if not op:
      return 0.0
    _, type_text, opcode, rest = op.groups()
    if opcode == "while":
      loop = re.search(r"condition=%?([\w.\-]+),\s*body=%?([\w.\-]+)", rest)
      if not loop:
        return 0.0
      trips = trip_count(self.computations.get(loop.group(1), [])) or 1
      return trips * self.traffic(loop.group(2))
    if opcode in ("conditional", "call"):
      callees = re.findall(r"(?:true_computation|false_computation|to_apply)=%?([\w.\-]+)", rest)
      for group in re.findall(r"branch_computations=\{([^}]*)\}", rest):
        callees += [c.strip().lstrip("%") for c in group.split(",") if c.strip()]
      return max((self.traffic(c) for c in callees), default=0.0)
    if opcode in _NO_TRAFFIC:
      return 0.0
    operands = _operand_names(rest)
    if opcode == "copy-start":  # (destination, source, context): the HBM side of the move
      destination = _FIRST_ARRAY.match(type_text)
      moved = _hbm_bytes(self.types.get(operands[0], "")) if operands else 0.0
      return moved + _hbm_bytes(destination.group(1) if destination else "")
    sliced, written = {}, None
    if opcode == "fusion":
      callee = re.search(r"calls=%?([\w.\-]+)", rest)
      if callee:
        sliced, written = _fusion_io(self.computations, callee.group(1), self.fusions)
    read = sum(sliced.get(i, _hbm_bytes(self.types.get(o, ""))) for i, o in enumerate(operands))
    return read + (written if written is not None else _hbm_bytes(type_text))
