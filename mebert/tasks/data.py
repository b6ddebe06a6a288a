"""Fine-tuning examples: local or gs:// files, or TFDS -> Example records with their origin, and
label vocabularies (held-out splits: mebert.tasks.holdout).

Formats (data.format, "auto" picks by suffix):
  tsv    split on tabs only, no quoting (GLUE: MRPC has quotes inside sentences), BOM stripped;
  csv    RFC 4180 quoting;  jsonl  one JSON object per line;
  conll  one word per line, columns split on whitespace, blank line between sentences, -DOCSTART-
         lines skipped (token tasks; .txt and .conll for them);
  text   one sentence per line (single-sentence tasks, unlabeled: predict input).
Every Example remembers its file and 1-based line (a TFDS record: its index), so a bad label or a
missing column is reported where it is.
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import io
import json
import os
from typing import Any

import numpy as np
from etils import epath


@dataclasses.dataclass
class Example:
  text: Any  # str; list[str] of words for token tasks
  pair: str | None = None
  label: Any = None  # str (classification), float (regression), list[str] (tags), None (unlabeled)
  file: str = ""
  line: int = 0
  id: str | None = None  # data.id_column's value (a GLUE test row's index), when the file has it

  @property
  def where(self) -> str:
    return f"{self.file} line {self.line}"


class DataError(ValueError):
  """Bad input data; the message names the file and line."""


def _remote(path: str) -> bool:
  return "://" in path


def _open_binary(path: str):
  return epath.Path(path).open("rb") if _remote(path) else open(path, "rb")


def _open_text(path: str, newline: str | None = None):
  """A local or gs:// (etils.epath, through gcsfs) file as UTF-8 text, a BOM dropped."""
  if _remote(path):
    return io.TextIOWrapper(epath.Path(path).open("rb"), encoding="utf-8-sig", newline=newline)
  return open(path, encoding="utf-8-sig", newline=newline)


def _is_file(path: str) -> bool:
  return epath.Path(path).is_file() if _remote(path) else os.path.isfile(path)


def _expand(part: str) -> list[str]:
  """A path, or the sorted matches of a glob (remote: a pattern in the file name only)."""
  if not glob.has_magic(part):
    return [part]
  if _remote(part):
    parent, _, pattern = part.rpartition("/")
    return sorted(str(p) for p in epath.Path(parent).glob(pattern))
  return sorted(glob.glob(os.path.expanduser(part)))


def _format_of(path: str, fmt: str, token_task: bool) -> str:
  if fmt != "auto":
    return fmt
  suffix = os.path.splitext(path)[1].lower()
  if suffix in (".tsv", ".tab"):
    return "tsv"
  if suffix == ".csv":
    return "csv"
  if suffix in (".jsonl", ".json", ".ndjson"):
    return "jsonl"
  if token_task:
    return "conll"
  return "text"


def _column(spec: str, header: list[str] | None, path: str):
  """A header name, else a 0-based (or negative) index."""
  if header is not None and spec in header:
    return header.index(spec)
  if str(spec).lstrip("-").isdigit():
    return int(spec)
  raise DataError(f"{path}: no column {spec!r} (header: {header})")


def _rows_from_table(path, fmt, header_row: bool):
  with _open_text(path, newline="") as f:
    if fmt == "tsv":
      rows = ((i + 1, line.rstrip("\r\n").split("\t")) for i, line in enumerate(f))
    else:
      reader = csv.reader(f)
      rows = ((reader.line_num, row) for row in reader)
    header = None
    for line, row in rows:
      if not any(cell.strip() for cell in row):
        continue
      if header_row and header is None:
        header = [c.strip() for c in row]
        continue
      yield header, line, row


def _read_table(path, fmt, task, data, labeled) -> list[Example]:
  out, cols = [], None
  for header, line, row in _rows_from_table(path, fmt, bool(data.header)):
    if cols is None:
      id_col = data.get("id_column", "")
      cols = (_column(task.text_column, header, path),
              _column(task.text_pair_column, header, path) if task.text_pair_column else None,
              _column(task.label_column, header, path) if labeled else None,
              header.index(id_col) if header and id_col and id_col in header else None)
    try:
      values = [None if c is None else row[c] for c in cols]
    except IndexError:
      raise DataError(f"{path} line {line}: {len(row)} columns, need column "
                      f"{max(c for c in cols if c is not None)}") from None
    text, pair, label, key = values
    out.append(Example(text.strip(), None if pair is None else pair.strip(),
                       None if label is None else label.strip(), path, line,
                       None if key is None else key.strip()))
  return out


def _read_jsonl(path, task, data, labeled) -> list[Example]:
  out = []
  with _open_text(path) as f:
    for i, raw in enumerate(f, 1):
      if not raw.strip():
        continue
      try:
        record = json.loads(raw)
      except json.JSONDecodeError as e:
        raise DataError(f"{path} line {i}: not JSON ({e})") from None
      keys = [task.text_column] + ([task.text_pair_column] if task.text_pair_column else [])
      keys += [task.label_column] if labeled else []
      missing = [k for k in keys if k not in record]
      if missing:
        raise DataError(f"{path} line {i}: no key {missing[0]!r} (keys: {sorted(record)})")
      label = record.get(task.label_column) if labeled else None
      key = record.get(data.get("id_column", "")) if data.get("id_column", "") else None
      out.append(Example(record[task.text_column], record.get(task.text_pair_column) or None,
                         label, path, i, None if key is None else str(key)))
  return out


def _read_conll(path, data, labeled) -> list[Example]:
  out, words, tags, start = [], [], [], 0
  word_col, tag_col = int(data.conll_word_column), int(data.conll_tag_column)

  def flush():
    if words:
      out.append(Example(list(words), None, list(tags) if labeled else None, path, start))
    words.clear()
    tags.clear()

  with _open_text(path) as f:
    for i, raw in enumerate(f, 1):
      cols = raw.split()
      if not cols:
        flush()
        continue
      if cols[0] == "-DOCSTART-":
        flush()
        continue
      if not words:
        start = i
      words.append(cols[word_col])
      if labeled:
        if len(cols) < 2:
          raise DataError(f"{path} line {i}: word {cols[0]!r} has no tag column")
        tags.append(cols[tag_col])
  flush()
  return out


def _read_text(path) -> list[Example]:
  with _open_text(path) as f:
    return [Example(line.strip(), None, None, path, i) for i, line in enumerate(f, 1)
            if line.strip()]


def _decode(value):
  if isinstance(value, bytes):
    return value.decode("utf-8")
  if isinstance(value, np.ndarray) and value.dtype.kind in "OSU":
    return [_decode(v) for v in value.tolist()]
  if isinstance(value, (list, tuple)):  # a Sequence feature of strings
    return [_decode(v) for v in value]
  return value


def _stripped(value):
  """Text as the TSV reader gives it (GLUE's SST-2 sentences end with a space)."""
  return value.strip() if isinstance(value, str) else value


def _read_tfds(part, task, data, labeled) -> list[Example]:
  import tensorflow_datasets as tfds

  name, _, split = part[len("tfds:"):].partition("@")
  split = split or "train"
  from mebert.tasks.prepare_tfds import register  # tfds's own builders, without TensorFlow

  register(name)
  where = data.tfds_data_dir or "the default TFDS data dir"
  try:
    src = tfds.data_source(name, split=split, data_dir=data.tfds_data_dir or None, download=False)
  except Exception as e:  # noqa: BLE001 - TFDS lists every registered dataset: keep one line
    raise FileNotFoundError(f"tfds:{name}@{split}: not readable from {where}; prepare it as "
                            f"array_record first ({str(e).splitlines()[0][:200]})") from None
  features = src.dataset_info.features
  columns = [task.text_column] + ([task.text_pair_column] if task.text_pair_column else [])
  for column in columns + ([task.label_column] if labeled else []):
    if column not in features:
      raise DataError(f"tfds:{name}@{split}: no feature {column!r} (features: {sorted(features)})")
  label_feature = features[task.label_column] if labeled else None
  names = getattr(label_feature, "names", None) or getattr(
      getattr(label_feature, "feature", None), "names", None)
  out, n, chunk = [], len(src), 4096
  for start in range(0, n, chunk):
    records = src.__getitems__(list(range(start, min(n, start + chunk))))
    for i, record in enumerate(records, start):
      label = _decode(record[task.label_column]) if labeled else None
      if names is not None and label is not None:  # ClassLabel ids -> names; -1 = no label
        ids = np.asarray(label)
        label = (None if ids.ndim == 0 and int(ids) < 0 else
                 names[int(ids)] if ids.ndim == 0 else [names[int(j)] for j in ids])
      elif isinstance(label, np.generic):
        label = label.item()
      key = data.get("id_column", "")
      out.append(Example(_stripped(_decode(record[task.text_column])),
                         _stripped(_decode(record[task.text_pair_column]))
                         if task.text_pair_column else None,
                         label, f"tfds:{name}@{split}", i,
                         str(_decode(record[key])) if key and key in record else None))
  return out


def _read_file(path: str, fmt: str, task, data, labeled: bool) -> list[Example]:
  """One local file; what the readers cannot parse becomes a DataError naming the file."""
  with _open_binary(path) as f:
    if b"\0" in f.read(1 << 16):
      raise DataError(f"{path}: a binary file (NUL bytes), not {fmt} text")
  try:
    if fmt in ("tsv", "csv"):
      return _read_table(path, fmt, task, data, labeled)
    if fmt == "jsonl":
      return _read_jsonl(path, task, data, labeled)
    if fmt == "conll":
      return _read_conll(path, data, labeled)
    if fmt == "text":
      if labeled:
        raise DataError(f"{path}: a plain text file has no labels; use TSV, CSV or JSONL")
      return _read_text(path)
  except UnicodeDecodeError as e:
    raise DataError(f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); "
                    "re-encode it as UTF-8, e.g. iconv -f latin1 -t utf-8") from None
  except csv.Error as e:  # e.g. a field over csv's size limit: a whole file on one line
    raise DataError(f"{path}: not readable as CSV ({e})") from None
  raise ValueError(f"data.format={fmt!r} is not one of auto, tsv, csv, jsonl, conll, text")


def read_examples(spec: str, task, data, *, labeled: bool = True, limit: int = 0) -> list[Example]:
  """Examples of a comma-separated list of files, globs and tfds:NAME@SPLIT parts."""
  token_task = task.kind == "token_classification"
  out: list[Example] = []
  for part in (p.strip() for p in str(spec).split(",")):
    if not part:
      continue
    if part.startswith("tfds:"):
      out += _read_tfds(part, task, data, labeled)
      continue
    paths = _expand(part)
    if not paths or not all(_is_file(p) for p in paths):
      raise FileNotFoundError(f"{part}: no such file")
    for path in paths:
      out += _read_file(path, _format_of(path, str(data.format), token_task), task, data, labeled)
  if not out:
    raise DataError(f"{spec}: no examples")
  return out[:limit] if limit > 0 else out


def _natural_key(label: str):
  try:
    return (0, float(label), label)
  except ValueError:
    return (1, 0.0, label)


def infer_labels(examples: list[Example], kind: str) -> list[str]:
  """The sorted label set of the training data ("O" first for tags; numbers in numeric order)."""
  if kind == "regression":
    return []
  seen: set[str] = set()
  for ex in examples:
    if ex.label is None:
      raise DataError(f"{ex.where}: no label")
    seen.update(map(str, ex.label) if kind == "token_classification" else [str(ex.label)])
  labels = sorted(seen, key=_natural_key)
  if "O" in labels:
    labels.remove("O")
    labels.insert(0, "O")
  return labels


def check_labels(examples: list[Example], labels: list[str], kind: str) -> None:
  """An unknown label is an error that names the label, the file and the line."""
  known = set(labels)
  for ex in examples:
    if ex.label is None:
      raise DataError(f"{ex.where}: no label")
    if kind == "regression":
      try:
        float(ex.label)
      except (TypeError, ValueError):
        raise DataError(f"{ex.where}: label {ex.label!r} is not a number") from None
      continue
    for label in (ex.label if kind == "token_classification" else [ex.label]):
      if str(label) not in known:
        raise DataError(f"{ex.where}: unknown label {str(label)!r}; the model knows "
                        f"{len(labels)} labels: {labels}")
