"""Keeps XLA:CPU's per-step scratch memory mapped from one step to the next (Linux, glibc).

XLA:CPU allocates an executable's temporary buffer (for a MiniLM fine-tuning step: 190 MB of
activations and gradients) with posix_memalign, each run. Dispatched asynchronously, the run and its
allocation happen on an XLA worker thread, which glibc serves from a per-thread arena whose heaps are
capped at 64 MB: a larger block is mmap'd and unmapped again when the step ends, and every step
faults in each 4 KB page afresh (47,000 page faults per MiniLM step; an AdamW-like pass over 47 MB
arrays ran 5x slower for it). So on CPU, single-device computations run inline on the calling
thread (`jax_cpu_enable_async_dispatch=False`: the loop waits for each step, which costs nothing
when host and "device" share the same cores), whose allocations come from glibc's main heap; with
mmap off and trimming at 2 GiB that heap keeps the block and the next step reuses it.

Both settings are process-wide, so importing mebert does not apply them: a program that imports
mebert as a library keeps its allocator and JAX's dispatch as they were. mebert's command-line
entrypoints (`python -m mebert.train`, `mebert.embed`, `mebert.tasks.seeds`, the benchmarks, ...)
call `configure()` first thing in their main, before JAX creates its CPU client; a library user
who wants the same may call it too. It leaves a JAX setting the user made
(JAX_CPU_ENABLE_ASYNC_DISPATCH in the environment) as it is, and MEBERT_GLIBC_TUNING=0 turns it all
off. The cost: the process keeps its peak heap.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4

_glibc_tuned: bool | None = None


def _tune_glibc() -> bool:
  """mallopt(M_MMAP_MAX=0, M_TRIM_THRESHOLD=2 GiB - 1), once; True if glibc took both."""
  global _glibc_tuned
  if _glibc_tuned is not None:
    return _glibc_tuned
  _glibc_tuned = False
  if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
    return False
  try:
    mallopt = ctypes.CDLL(None).mallopt
  except (OSError, AttributeError):
    return False
  mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
  mallopt.restype = ctypes.c_int
  # mallopt returns 1 on success. The trim threshold is an int: 2 GiB - 1.
  _glibc_tuned = all(mallopt(param, value) == 1
                     for param, value in ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1)))
  return _glibc_tuned


def enabled() -> bool:
  """Whether the environment allows the tuning (MEBERT_GLIBC_TUNING is not "0")."""
  return os.environ.get("MEBERT_GLIBC_TUNING", "1") != "0"


def configure(jax_dispatch: bool = True) -> bool:
  """Applies the tuning to this process; True if glibc took it. Idempotent.

  jax_dispatch=False tunes glibc only (a process that runs no JAX, e.g. the PyTorch peer of the
  benchmarks, which gets the same allocator as the JAX programs it is compared with).
  """
  if not enabled() or not _tune_glibc():
    return False
  if jax_dispatch and "JAX_CPU_ENABLE_ASYNC_DISPATCH" not in os.environ:
    import jax

    if jax.config.read("jax_cpu_enable_async_dispatch"):
      jax.config.update("jax_cpu_enable_async_dispatch", False)
      logging.getLogger(__name__).info(
          "host tuning: glibc keeps freed memory mapped (mallopt), JAX runs single-device CPU "
          "computations inline (MEBERT_GLIBC_TUNING=0 turns both off)")
  return True
