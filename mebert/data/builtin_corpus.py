"""The built-in pretraining corpus: English text that every Python installation ships.

Two sources, both read without downloading or importing anything beyond `pydoc_data`:
  * `pydoc_data.topics.topics`: the language reference topics `help()` shows (~0.45 MB);
  * the docstrings of the standard library's own .py files (~1.6 MB), parsed with `ast` (never
    imported: importing tkinter/turtle/... has side effects and some modules are platform-only).

One document per topic and one per stdlib module (all of its docstrings, in source order), in a
sorted, hence deterministic, order. The text differs between Python versions, so tests must not pin
exact counts.

Parsing ~9 MB of stdlib source with `ast` takes 4-8 s on a slow 2-core machine, so the extracted
documents are cached as JSON under $MEBERT_CACHE_DIR (default ~/.cache/mebert), keyed by the Python
version and the stdlib files' sizes and mtimes; a cache that cannot be written is simply skipped.
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import os
import sys
import sysconfig

# Folders of the stdlib that are not documentation prose: tests, the IDLE app, third-party
# packages, codec tables (1.4 MB of source for 14 KB of docstrings), and `pydoc_data`, whose
# topics.py is a 750 KB dict literal we read by importing it instead.
_SKIP_DIRS = frozenset({
    "test", "tests", "idle_test", "idlelib", "site-packages", "dist-packages", "lib2to3",
    "turtledemo", "__pycache__", "ensurepip", "lib-dynload", "encodings", "html", "pydoc_data",
    "venv",
})
_DOC_NODES = (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
_CACHE_FORMAT = 1


def _stdlib_files(root: str) -> list[str]:
  """Sorted .py files of the stdlib (relative paths), walking folders in sorted order."""
  out = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith(("config-", ".")))
    rel = os.path.relpath(dirpath, root)
    out += [os.path.normpath(os.path.join(rel, f)) for f in sorted(filenames) if f.endswith(".py")]
  return out


def _module_docstrings(source: bytes) -> list[str]:
  """All docstrings of a module, module first, then classes/functions depth-first in source order."""
  tree = ast.parse(source)
  out, stack = [], [tree]
  while stack:
    node = stack.pop()
    doc = ast.get_docstring(node, clean=True)
    if doc:
      out.append(doc)
    stack.extend(reversed([c for c in node.body if isinstance(c, _DOC_NODES)]))
  return out


def _extract(root: str, files: list[str], stats: dict[str, int]) -> list[str]:
  from pydoc_data.topics import topics  # pylint: disable=g-import-not-at-top

  docs = [topics[k] for k in sorted(topics)]
  for rel in files:
    try:
      with open(os.path.join(root, rel), "rb") as f:
        docstrings = _module_docstrings(f.read())
    except (SyntaxError, ValueError, OSError):  # a broken or unreadable file is skipped, counted
      stats["builtin_unparsable_files"] = stats.get("builtin_unparsable_files", 0) + 1
      continue
    if docstrings:
      docs.append("\n\n".join(docstrings))
  return docs


def _cache_path(root: str, files: list[str]) -> str | None:
  """Where the extracted corpus is kept between runs: only where MEBERT_CACHE_DIR says, since a
  run writes nothing outside its workdir unless asked (extraction takes a few seconds)."""
  cache_dir = os.environ.get("MEBERT_CACHE_DIR")
  if not cache_dir:
    return None
  h = hashlib.sha256(f"{_CACHE_FORMAT}|{sys.version}|{root}".encode())
  for rel in files:
    st = os.stat(os.path.join(root, rel))
    h.update(f"|{rel}:{st.st_size}:{st.st_mtime_ns}".encode())
  return os.path.join(cache_dir, f"builtin-corpus-{h.hexdigest()[:16]}.json")


def builtin_documents(stats: dict[str, int] | None = None) -> list[str]:
  """The built-in corpus as a deterministic list of documents (raw text, blank lines inside)."""
  stats = {} if stats is None else stats
  root = sysconfig.get_paths()["stdlib"]
  files = _stdlib_files(root)
  path = _cache_path(root, files)
  if path is None:
    return _extract(root, files, stats)
  try:
    with open(path, encoding="utf-8") as f:
      cached = json.load(f)
    stats.update(cached["stats"])
    return cached["documents"]
  except (OSError, ValueError, KeyError):
    pass
  docs = _extract(root, files, stats)
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
      json.dump({"stats": stats, "documents": docs}, f)
    os.replace(tmp, path)  # atomic: a concurrent reader sees the old state or the whole file
  except OSError as e:
    logging.info("builtin corpus: not cached (%s)", e)
  return docs
