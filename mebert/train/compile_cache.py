"""Compiled programs kept on disk, so that running a workdir again does not compile again.

A MiniLM fine-tuning step takes 15-20 s to compile on a 2-core CPU, once per packed row count. The
same programs come back whenever a run restarts: after a preemption, for `--mode=eval` and
`--mode=predict` on its checkpoints, for each seed of `python -m mebert.tasks.seeds`. JAX's
persistent compilation cache keys each executable by its HLO, compile options, devices and JAX
version, so a hit is the very program a fresh compile would give.

Where (`--compilation_cache` of `python -m mebert.train`):
  unset   JAX's own setting if the user made one (JAX_COMPILATION_CACHE_DIR), else
          WORKDIR/xla_cache: a run writes nothing outside its workdir unless asked;
  DIR     a cache shared by every run that names it (config-override experiments);
  none    no cache: every run compiles afresh.

Local caches are capped at MAX_BYTES, the least recently used programs going first.
"""

from __future__ import annotations

import logging
import os

import jax

log = logging.getLogger(__name__)

OFF = ("", "none")
DEFAULT_SUBDIR = "xla_cache"
MAX_BYTES = 4 << 30


def resolve(flag_value: str | None, workdir: str, jax_setting: str | None) -> str | None:
  """The cache directory for `--compilation_cache=flag_value` (None: not given), or None for none;
  `jax_setting` is JAX's own jax_compilation_cache_dir."""
  if flag_value is None:
    if jax_setting:  # the user's own JAX setting wins over our default
      return jax_setting
    return os.path.join(workdir, DEFAULT_SUBDIR)
  if flag_value.strip().lower() in OFF:
    return None
  return flag_value


def enable(flag_value: str | None, workdir: str) -> str | None:
  """Points JAX's persistent compilation cache where `resolve` says; returns the directory.

  A directory named on the command line is created now, and one that cannot be is an error. The
  default is created by JAX at the first compile, so a run stopped by a bad config leaves no empty
  folder behind; where it could not be written (a read-only workdir under --mode=eval), the run
  compiles without a cache, with a warning."""
  path = resolve(flag_value, workdir, jax.config.jax_compilation_cache_dir)
  if path is None:
    jax.config.update("jax_compilation_cache_dir", None)
    return None
  local = "://" not in path
  if local:
    path = os.path.abspath(os.path.expanduser(path))
    if flag_value is not None:
      try:
        os.makedirs(path, exist_ok=True)
      except OSError as e:
        raise ValueError(f"--compilation_cache={path}: cannot create the directory "
                         f"({e.strerror}); pass --compilation_cache=none to run without it"
                         ) from None
    elif not os.access(_nearest_existing(path), os.W_OK):
      log.warning("%s cannot be written: compiling without a compilation cache", path)
      jax.config.update("jax_compilation_cache_dir", None)
      return None
  jax.config.update("jax_compilation_cache_dir", path)
  if local and jax.config.jax_compilation_cache_max_size == -1:
    jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)  # eviction locks local files
  log.info("compiled programs are cached in %s (--compilation_cache=none turns this off)", path)
  return path


def _nearest_existing(path: str) -> str:
  while not os.path.exists(path) and os.path.dirname(path) != path:
    path = os.path.dirname(path)
  return path
