"""mebert.host_memory: a computation's large scratch buffer is reused from run to run, not faulted
in afresh (the fine-tuning step's 190 MB scratch cost it 47,000 page faults per step); importing
mebert changes nothing process-wide, the entrypoints opt in."""

import ast
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]

# x @ w1 is a 72 MiB temporary: past glibc's 64 MB per-thread-arena heaps. Prints the JAX dispatch
# setting, then the page faults of one run (median of 7: a run that grows the heap faults once).
_PROBE = """
import resource, statistics, sys
import mebert
if sys.argv[1] == "import only":  # the library, as a program that uses it imports it
  import mebert.train.steps, mebert.tasks.finetune, mebert.bench.harness
else:
  from mebert import host_memory
  host_memory.configure()
import jax, jax.numpy as jnp
print(jax.config.read("jax_cpu_enable_async_dispatch"))
x = jnp.ones((32768, 64), jnp.float32)
w1 = jnp.ones((64, 576), jnp.float32)
w2 = jnp.ones((576, 8), jnp.float32)
f = jax.jit(lambda x, w1, w2: (jnp.tanh(x @ w1) @ w2).sum())
f(x, w1, w2).block_until_ready()
faults = []
for _ in range(7):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  f(x, w1, w2).block_until_ready()
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(statistics.median(faults))
"""


def _probe(action: str, tuning: str = "1") -> tuple[str, float]:
  env = {k: v for k, v in os.environ.items() if k != "JAX_CPU_ENABLE_ASYNC_DISPATCH"}
  env.update(MEBERT_GLIBC_TUNING=tuning, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  out = subprocess.run([sys.executable, "-c", _PROBE, action], env=env, capture_output=True,
                       text=True, timeout=300, check=True)
  dispatch, faults = out.stdout.strip().splitlines()[-2:]
  return dispatch, float(faults)


@pytest.mark.skipif(sys.platform != "linux", reason="glibc malloc tuning is Linux-only")
def test_import_leaves_the_process_alone_and_configure_tunes_it():
  # 72 MiB is 18,432 pages of 4 KB: glibc's defaults fault (nearly) all of them in every run.
  dispatch, faults = _probe("import only")
  assert dispatch == "True" and faults > 9_000, (dispatch, faults)
  dispatch, faults = _probe("configure")
  assert dispatch == "False" and faults < 1_000, (dispatch, faults)
  dispatch, faults = _probe("configure", tuning="0")  # the switch the entrypoints honour
  assert dispatch == "True" and faults > 9_000, (dispatch, faults)


def test_the_train_entrypoint_applies_the_tuning(tmp_path):
  env = {k: v for k, v in os.environ.items() if k != "JAX_CPU_ENABLE_ASYNC_DISPATCH"}
  env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO), MEBERT_GLIBC_TUNING="1")
  missing = tmp_path / "no-such-corpus.txt"
  proc = subprocess.run(
      [sys.executable, "-m", "mebert.train", "--config=configs/pretrain/tiny.py",
       f"--workdir={tmp_path / 'w'}", f"--config.data.corpus={missing}"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0 and str(missing) in proc.stderr.splitlines()[-1]  # it got that far
  assert "host tuning: glibc keeps freed memory mapped" in proc.stderr, proc.stderr[-2000:]


# Every command-line program that runs JAX computations: main() calls host_memory.configure()
# before anything else starts JAX (the benchmark workers through their shared worker_main, whose
# host_tuning() loads mebert/host_memory.py by path for the Flax peer's venv).
ENTRYPOINTS = ["mebert/train/__main__.py", "mebert/embed.py", "mebert/tasks/seeds.py",
               "mebert/interop/__main__.py", "mebert/interop/bench_embed.py",
               "mebert/compress/bench_int8.py", "mebert/compress/bench_distill.py",
               "mebert/experiments/encodings.py", "mebert/bench/scaling.py",
               "mebert/bench/finetune_peer.py", "mebert/bench/finetune_step_probe.py",
               "mebert/bench/timing.py", "mebert/bench/pretrain.py",
               "mebert/bench/pretrain_peer.py"]


@pytest.mark.parametrize("path", ENTRYPOINTS)
def test_entrypoint_main_configures_before_jax(path):
  tree = ast.parse((REPO / path).read_text())
  name = "worker_main" if path.endswith("timing.py") else "main"
  main = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name)
  calls = [n for n in ast.walk(main) if isinstance(n, ast.Call)]
  configure = [c for c in calls if ast.unparse(c.func) in ("host_memory.configure", "host_tuning")]
  assert configure, f"{path}: {name}() does not call host_memory.configure()"
  first = min(c.lineno for c in configure)
  # Nothing that starts JAX before it: no jax call or mebert run/train in main above that line.
  early = [ast.unparse(c.func) for c in calls if c.lineno < first]
  assert not any(s.startswith(("jax.", "run", "trainer.", "app.run")) for s in early), early
