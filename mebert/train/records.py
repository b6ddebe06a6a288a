"""A run's JSON records in its workdir (config.json, eval_step_<N>.json, eval_results.json,
best.json, early_stopping.json): written by process 0, whole or not at all."""

from __future__ import annotations

import json

import jax
from etils import epath


def write_json(workdir: str, name: str, record: dict) -> None:
  """WORKDIR/name on process 0, whole or not at all: on a local disk through a temporary file and a
  rename, so a kill never leaves half a record; an object store (gs://...) is written directly, as
  its uploads appear whole or not at all (and a rename there is a copy and a delete). Values JSON
  cannot hold (numpy scalars, paths) are written as strings."""
  if jax.process_index() != 0:
    return
  path = epath.Path(workdir)
  path.mkdir(parents=True, exist_ok=True)
  text = json.dumps(record, indent=2, sort_keys=True, default=str) + "\n"
  if "://" in str(workdir):
    (path / name).write_text(text)
    return
  tmp = path / f"{name}.tmp"
  tmp.write_text(text)
  tmp.replace(path / name)


def numeric(metrics: dict | None) -> dict:
  """The scalar entries of a metrics dict (what TensorBoard and checkpoint metrics take)."""
  return {k: float(v) for k, v in (metrics or {}).items()
          if isinstance(v, (int, float)) and not isinstance(v, bool)}
