"""The launchers' dry runs print the commands a run would execute; local.sh's process handling."""

import os
import re
import shlex
import stat
import subprocess
import time

import pytest

import parallel_helpers as H

LAUNCH = H.REPO / "launch"
FLAGS = ["--config=configs/pretrain/bert_base.py:phase1", "--workdir=gs://bucket/base",
         "--config.mesh.fsdp=-1", "--config.train.profile_steps=10, 20"]


def _run(args, env=None, timeout=60):
  full_env = {k: v for k, v in os.environ.items() if not k.startswith(("MEBERT_", "DRY_RUN"))}
  full_env.update(env or {})
  return subprocess.run(args, capture_output=True, text=True, env=full_env, timeout=timeout,
                        cwd=H.REPO)


def _train_argv(line: str) -> list[str]:
  """The `python -m mebert.train ...` part of a printed shell line, as argv."""
  words = shlex.split(line.split(" > ")[0])
  return words[words.index("-m") + 2:]


def test_local_dry_run_prints_one_command_per_process():
  out = _run(["bash", str(LAUNCH / "local.sh"), "--dry-run", "2", *FLAGS],
             env={"MEBERT_TOTAL_CPU_DEVICES": "4", "PORT": "12345", "LOG_DIR": "/tmp/logs here"})
  assert out.returncode == 0, out.stderr
  lines = out.stdout.splitlines()
  assert lines[0].startswith("# 2 processes x 2 CPU devices, coordinator localhost:12345")
  commands = [l for l in lines if "-m mebert.train" in l]
  assert len(commands) == 2
  for i, line in enumerate(commands):
    assert f"MEBERT_PROCESS_ID={i} " in line and "MEBERT_NUM_PROCESSES=2 " in line
    assert "MEBERT_LOCAL_CPU_DEVICES=2 " in line and "MEBERT_COORDINATOR_ADDRESS=localhost:12345" in line
    assert "JAX_PLATFORMS=cpu" in line
    assert _train_argv(line) == FLAGS  # quoted so that a shell gets the flags back unchanged
    assert line.endswith(f"> '/tmp/logs here/process_{i}.log' 2>&1 &")
  assert lines[-1].startswith("wait")


def test_local_dry_run_env_form_and_log_dir_in_the_workdir(tmp_path):
  out = _run(["bash", str(LAUNCH / "local.sh"), "4", f"--workdir={tmp_path}"],
             env={"DRY_RUN": "1", "MEBERT_TOTAL_CPU_DEVICES": "4"})
  assert out.returncode == 0, out.stderr
  assert out.stdout.count("MEBERT_LOCAL_CPU_DEVICES=1 ") == 4
  assert re.search(rf"logs in {tmp_path}/logs/local-\d{{8}}-\d{{6}}", out.stdout)
  assert not (tmp_path / "logs").exists()  # a dry run creates nothing


@pytest.mark.parametrize("args, env, message", [
    (["x"], {}, "usage"),
    (["3", "--workdir=/tmp/w"], {"MEBERT_TOTAL_CPU_DEVICES": "4"}, "does not split"),
])
def test_local_rejects_bad_arguments(args, env, message):
  out = _run(["bash", str(LAUNCH / "local.sh"), "--dry-run", *args], env=env)
  assert out.returncode == 2 and message in out.stderr


def test_local_waits_for_all_and_stops_the_rest_when_one_fails(tmp_path):
  fake = tmp_path / "fake_python"  # stands in for the interpreter: behaves by process id
  fake.write_text("#!/usr/bin/env bash\n"
                  'echo "process $MEBERT_PROCESS_ID of $MEBERT_NUM_PROCESSES: $*"\n'
                  'if [[ $MEBERT_PROCESS_ID == 1 ]]; then sleep 0.5; echo boom >&2; exit 3; fi\n'
                  "exec sleep 60\n")
  fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
  start = time.monotonic()
  out = _run(["bash", str(LAUNCH / "local.sh"), "3", "--workdir=/tmp/w"],
             env={"PYTHON": str(fake), "LOG_DIR": str(tmp_path / "logs"), "QUIET": "1",
                  "MEBERT_TOTAL_CPU_DEVICES": "3"})
  assert out.returncode == 3
  assert time.monotonic() - start < 30  # did not wait for the sleepers
  assert "process 1 failed with status 3" in out.stderr and "boom" in out.stderr
  logs = sorted(p.name for p in (tmp_path / "logs").iterdir())
  assert logs == ["process_0.log", "process_1.log", "process_2.log"]
  assert "process 2 of 3: -m mebert.train --workdir=/tmp/w" in (tmp_path / "logs" / "process_2.log").read_text()

  ok = tmp_path / "ok_python"
  ok.write_text("#!/usr/bin/env bash\necho ran $MEBERT_PROCESS_ID\n")
  ok.chmod(ok.stat().st_mode | stat.S_IEXEC)
  out = _run(["bash", str(LAUNCH / "local.sh"), "2"],
             env={"PYTHON": str(ok), "LOG_DIR": str(tmp_path / "logs2"), "MEBERT_TOTAL_CPU_DEVICES": "2"})
  assert out.returncode == 0 and "ran 0" in out.stdout and "all 2 processes finished" in out.stdout


def test_tpu_vm_dry_run_creates_copies_installs_runs_everywhere_and_tears_down():
  env = {"TPU_NAME": "bert-pod", "ZONE": "us-central2-b", "ACCELERATOR_TYPE": "v4-32",
         "RUNTIME_VERSION": "tpu-ubuntu2204-base", "QUEUED": "1", "SPOT": "1", "NUM_WORKERS": "4",
         "RUN_NAME": "r1", "PROJECT": "my-proj"}
  out = _run(["bash", str(LAUNCH / "tpu_vm.sh"), "--dry-run", "up", "--", *FLAGS], env=env)
  assert out.returncode == 0, out.stderr
  lines = out.stdout.splitlines()
  create = next(l for l in lines if "queued-resources create" in l)
  for part in ("bert-pod-qr", "--node-id=bert-pod", "--accelerator-type=v4-32",
               "--runtime-version=tpu-ubuntu2204-base", "--spot", "--zone=us-central2-b",
               "--project=my-proj"):
    assert part in create
  assert any("ls-files" in l and "tar -czf" in l for l in lines)
  assert any("tpu-vm scp" in l and "--worker=all" in l for l in lines)
  install = next(l for l in lines if "requirements.txt" in l)
  assert "--worker=all" in install and "requirements-tpu.txt" in install and "venv" in install
  runs = [l for l in lines if "-m mebert.train" in l]
  assert len(runs) == 4
  for i, line in enumerate(runs):
    assert f"--worker={i} " in line and line.endswith(f"worker_{i}.log 2>&1 &")
    remote = shlex.split(line.split(" > ")[0])[-1]
    assert remote.startswith("--command=")
    remote = remote[len("--command="):]
    # stale TPU users are killed and the lockfile removed before training starts
    assert remote.index("kill -9") < remote.index("rm -f /tmp/libtpu_lockfile") < remote.index("mebert.train")
    assert shlex.split(remote.split("-m mebert.train", 1)[1]) == ["--platform=tpu", *FLAGS]
  assert any(l.startswith("tail -n +1 -F logs/tpu-bert-pod-r1/worker_0.log") for l in lines)

  out = _run(["bash", str(LAUNCH / "tpu_vm.sh"), "--dry-run", "delete"], env=env)
  assert "queued-resources delete bert-pod-qr" in out.stdout and "--force" in out.stdout
  env.pop("QUEUED")
  out = _run(["bash", str(LAUNCH / "tpu_vm.sh"), "--dry-run", "delete"], env=env)
  assert "tpu-vm delete bert-pod" in out.stdout
  out = _run(["bash", str(LAUNCH / "tpu_vm.sh"), "--dry-run", "create"], env=env)
  assert "tpu-vm create bert-pod" in out.stdout and "--version=tpu-ubuntu2204-base" in out.stdout


def test_tpu_vm_needs_a_name_and_a_command():
  assert _run(["bash", str(LAUNCH / "tpu_vm.sh"), "--dry-run", "fly"]).returncode == 2
  out = _run(["bash", str(LAUNCH / "tpu_vm.sh"), "--dry-run", "run", "--", *FLAGS])
  assert out.returncode != 0 and "TPU_NAME" in out.stderr


def test_slurm_dry_run_runs_one_task_per_gpu():
  text = (LAUNCH / "slurm.sbatch").read_text()
  header = dict(re.findall(r"#SBATCH --([\w-]+)=(\S+)", text))
  assert header["ntasks-per-node"] == header["gpus-per-node"]  # one process per GPU
  out = _run(["bash", str(LAUNCH / "slurm.sbatch"), *FLAGS],
             env={"DRY_RUN": "1", "PYTHON": "/opt/venv/bin/python"})
  assert out.returncode == 0, out.stderr
  srun = shlex.split(out.stdout.splitlines()[-1])
  assert srun[0] == "srun" and "--kill-on-bad-exit=1" in srun
  assert not any(a.startswith(("--gpus-per-task", "--gpu-bind")) for a in srun)
  assert srun[srun.index("/opt/venv/bin/python"):] == ["/opt/venv/bin/python", "-m", "mebert.train",
                                                       "--platform=gpu", *FLAGS]
