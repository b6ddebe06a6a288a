"""--mode=compile for Cloud TPU slices from this CPU machine: libtpu's compile-only devices.

The compiling tests run whenever libtpu (the TPU compiler, requirements-tpu.txt) is installed and
are skipped, with that reason, otherwise. BERT-base and BERT-large compiles are slow tests.
"""

import json
import os
import subprocess
import sys

import pytest

import parallel_helpers as H
from mebert.parallel import tpu_slices
from mebert.train import compile_report, hlo_collectives

needs_libtpu = pytest.mark.skipif(
    not tpu_slices.libtpu_installed(),
    reason="libtpu (the TPU compiler) is not installed: pip install -r requirements-tpu.txt")


def test_slice_names_count_cores_on_v4_and_v5p_and_chips_on_v5e_and_v6e():
  expected = {  # name: (chips, chip grid, hosts)
      "tpu:v5p-8": (4, (2, 2, 1), 1), "v5p-128": (64, (4, 4, 4), 16), "tpu:v4-8": (4, (2, 2, 1), 1),
      "tpu:v4-4096": (2048, (8, 16, 16), 512), "tpu:v5e-1": (1, (1, 1), 1),
      "tpu:v5e-8": (8, (2, 4), 1), "tpu:v5litepod-16": (16, (4, 4), 4),
      "tpu:v5e-256": (256, (16, 16), 64), "tpu:v6e-64": (64, (8, 8), 16),
  }
  for name, (chips, shape, hosts) in expected.items():
    s = tpu_slices.parse_target(name)
    assert (s.num_chips, s.shape, s.num_hosts) == (chips, shape, hosts), name
  assert tpu_slices.parse_target("tpu:v5p-128").wrap == (True, True, True)  # a full 4x4x4 cube
  assert tpu_slices.parse_target("tpu:v5p-8").wrap == (False, False, False)
  assert tpu_slices.parse_target("tpu:v5e-256").wrap == (True, True, False)
  for bad in ("tpu:v5p-6", "tpu:v5x-8", "tpu:v5p", "v6e-512"):
    with pytest.raises(ValueError, match=r"not a known TPU slice; valid: .*v5p-8.*v5e-256"):
      tpu_slices.parse_target(bad)
  with pytest.raises(ValueError, match="only TPU slices"):
    tpu_slices.parse_target("gpu:h100-8")


def test_a_mesh_that_does_not_divide_the_slice_is_named_before_libtpu_loads(tmp_path):
  config = H.load_config("tiny")
  config.compile.target = "tpu:v5p-8"
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 1, 8, 1
  with pytest.raises(ValueError,
                     match=r"compile.target=tpu:v5p-8 has 4 chips .* 8 .* 4 tpu devices"):
    compile_report.experiment(config, str(tmp_path))
  config.mesh.data, config.mesh.fsdp = -1, 3
  with pytest.raises(ValueError, match=r"tpu:v5p-8 has 4 chips.*does not divide the 4 tpu devices"):
    compile_report.experiment(config, str(tmp_path))


def test_missing_libtpu_is_one_error_line_saying_what_to_install(tmp_path):
  """Where libtpu is installed, the child process is made to fail to import it."""
  code = ("import sys; sys.modules['libtpu'] = None; sys.argv = sys.argv[1:]; "
          "from mebert.train.__main__ import run; run()")
  env = {k: v for k, v in os.environ.items() if k != "TPU_LIBRARY_PATH"}
  env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(H.REPO))
  out = subprocess.run(
      [sys.executable, "-c", code, "mebert.train", "--config=configs/pretrain/tiny.py",
       f"--workdir={tmp_path}", "--mode=compile", "--config.model.vocab_size=512",
       "--config.compile.target=tpu:v5p-8"],
      cwd=H.REPO, env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode != 0
  last = out.stderr.strip().splitlines()[-1]
  assert last.startswith("error: compiling for tpu:v5p-8 needs the TPU compiler"), out.stderr[-999:]
  assert "pip install -r requirements-tpu.txt" in last


@needs_libtpu
def test_libtpu_describes_each_slice_as_one_device_per_chip():
  for name in ("tpu:v4-8", "tpu:v5p-16", "tpu:v5p-128", "tpu:v5e-8", "tpu:v5e-256", "tpu:v6e-16"):
    target = tpu_slices.parse_target(name)
    devices = tpu_slices.compile_only_devices(target)
    assert len(devices) == target.num_chips, name
    assert {d.device_kind for d in devices} == {target.chip.device_kind}, name
    assert len({d.process_index for d in devices}) == target.num_hosts, name


def _tiny_tpu_config(target: str):
  config = H.load_config("tiny")  # no dropout: "auto" attention may pick splash
  config.compile.target = target
  config.model.num_layers, config.model.vocab_size, config.model.dtype = 1, 1024, "auto"
  config.model.max_position_embeddings = config.data.seq_len = 256
  config.data.max_predictions_per_seq, config.train.batch_size = 20, 16
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 2, 2, 2
  return config


@needs_libtpu
def test_tiny_model_compiles_for_a_v5p_slice_with_splash_under_shard_map(tmp_path):
  """tpu:v5p-16 (8 chips, 2 hosts), mesh 2x2x2: nothing concrete is built before the step, "auto"
  picks bf16 and splash from the mesh's devices (this process's default devices are CPUs), and
  the kernel runs per device: no q, k or v is all-gathered."""
  config = _tiny_tpu_config("tpu:v5p-16")
  exp = compile_report.experiment(config, str(tmp_path))
  compiled = compile_report.compile_train_step(exp)
  report = compile_report.report(exp, compiled, eval_step=False)
  assert report["target"] == "tpu:v5p-16" and report["platform"] == "tpu"
  assert (report["devices"], report["hosts"], report["device_kind"]) == (8, 2, "TPU v5")
  assert report["dtype"] == "bfloat16" and report["param_dtype"] == "float32"
  assert report["attention_kernel"] == "splash (Mosaic)"
  assert report["fits"] and report["device_memory_bytes"] == 95 * 2**30
  assert 0 < report["peak_bytes_per_device_estimate"] < 2**30
  assert 0.5 < report["compiled_over_useful_flops"] < 1.5
  assert report["splash_flops_per_step_estimate"] > 0  # added: XLA does not count Mosaic kernels
  # On-chip copies and in-place updates are not HBM traffic (mebert.train.hlo_traffic).
  assert 0 < report["hbm_bytes_per_step_per_device"] < report[
      "xla_bytes_accessed_per_step_per_device"]
  roof = report["roofline"]
  assert roof["step_time_lower_bound_s"] == max(roof["compute_s"], roof["hbm_s"], roof["ici_s"])
  assert 0 < roof["useful_mfu_upper_bound"] <= 1
  assert report["collectives"]["all-gather"]["ops"] > 0  # FSDP gathers the weights
  json.dumps(report)
  text = compile_report.format_report(report)
  assert "roofline (v5p)" in text and "compiled/useful" in text

  hlo = compiled.as_text()
  gathers = [c for c in hlo_collectives.collectives(hlo, 8)[0] if c.kind == "all-gather"]
  # Weights are 1-2D here; q, k, v and the attention output are [rows, 256, heads, 64] or
  # [rows, 256, 128]. (FSDP's embedding lookup gathers its [rows, 256, 128] output: not attention.)
  attention = [c for c in gathers if len(c.shape) >= 3 and "/attention/" in c.op_name]
  assert gathers and not attention, attention
  assert "tpu_custom_call" in hlo


@pytest.mark.slow
@needs_libtpu
def test_bert_base_phase1_on_v5p_8_in_bf16_compiles_what_it_needs(tmp_path):
  """Minutes: compiled/useful FLOPs <= 1.05 (no remat, the MLM head at the 20 predictions)."""
  config = H.load_config("bert_base", "phase1")
  config.compile.target = "tpu:v5p-8"
  report = compile_report.compile_and_report(config, str(tmp_path))
  assert report["dtype"] == "bfloat16" and report["fits"]
  assert 0.98 <= report["compiled_over_useful_flops"] <= 1.05


@pytest.mark.slow
@needs_libtpu
def test_bert_large_phase2_fits_a_v5p_8(tmp_path):
  config = H.load_config("bert_large", "phase2")
  config.compile.target = "tpu:v5p-8"
  report = compile_report.compile_and_report(config, str(tmp_path))
  assert report["fits"] and report["dtype"] == "bfloat16"
  assert report["flops_source"].startswith("the step without loops")


@pytest.mark.slow
@needs_libtpu
def test_bert_large_lamb_accumulates_on_64_chips_without_gathering_the_batch(tmp_path):
  """NVIDIA's LAMB phase 1 (65,536 x 128 tokens) on 64 chips, 8 micro-batches of 128 rows a chip:
  each micro-batch is every device's own rows (mebert.train.steps.micro_batches)."""
  config = H.load_config("bert_large", "lamb")
  config.compile.target = "tpu:v5p-128"
  config.train.grad_accum_steps = 8
  exp = compile_report.experiment(config, str(tmp_path))
  found, unknown = hlo_collectives.collectives(
      compile_report.compile_train_step(exp).as_text(), exp.mesh.size)
  assert not unknown
  row_dims = (int(config.data.seq_len), int(config.data.max_predictions_per_seq))
  batch_gathers = [c for c in found if c.kind in ("all-gather", "all-to-all")
                   and c.dtype in ("s32", "f32") and len(c.shape) >= 2 and c.shape[-1] in row_dims]
  assert not batch_gathers, batch_gathers


@needs_libtpu
def test_the_installed_libtpu_is_the_build_jax_pins():
  from importlib import metadata

  from packaging.requirements import Requirement

  try:
    installed = metadata.version("libtpu")
  except metadata.PackageNotFoundError:
    pytest.skip("libtpu comes from TPU_LIBRARY_PATH, not a wheel")
  pins = [Requirement(r) for r in metadata.requires("jax") or () if r.startswith("libtpu")]
  pin = next(p for p in pins if p.marker is None or p.marker.evaluate({"extra": "tpu"}))
  assert pin.specifier.contains(installed, prereleases=True), (installed, str(pin))
