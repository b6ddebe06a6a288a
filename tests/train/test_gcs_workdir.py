"""A gs:// workdir against a local GCS server (gcp-storage-emulator): the real clients, each pointed
at it the way its docs say (gcsfs and google-cloud-storage by STORAGE_EMULATOR_HOST, tensorstore by
TENSORSTORE_GCS_HTTP_URL). A tiny pretraining run trains its vocabulary, writes metrics.jsonl,
TensorBoard events and Orbax checkpoints there; --mode=eval and a resumed run read them back."""

import json
import os
import struct
import subprocess
import sys
import threading

import pytest

server_lib = pytest.importorskip("gcp_storage_emulator.server")
pytest.importorskip("gcsfs")
storage = pytest.importorskip("google.cloud.storage")

from tiny_run import REPO, subprocess_env  # noqa: E402  (tests/train on sys.path via rootdir)

BUCKET = "mebert-test"
TINY = ["--config.model.hidden_size=32", "--config.model.num_layers=1", "--config.model.num_heads=2",
        "--config.model.intermediate_size=64", "--config.model.max_position_embeddings=32",
        "--config.data.vocab_size=400", "--config.data.seq_len=32",
        "--config.data.max_predictions_per_seq=5", "--config.train.batch_size=8",
        "--config.train.warmup_steps=1", "--config.train.log_every=2",
        "--config.checkpoint.every_steps=3", "--config.eval.every_steps=100",
        "--config.eval.num_batches=1", "--config.eval.batch_size=8"]


_ONE_AT_A_TIME = threading.Lock()


def _object(storage_, bucket: str, name: str | None):
  try:
    return storage_.get_file_obj(bucket, name) if name else None
  except Exception:  # noqa: BLE001 - the emulator raises NotFound
    return None


def _as_gcs(handler):
  """The emulator's handler made to behave as GCS does where tensorstore (Orbax's OCDBT manifest)
  relies on it: one request at a time (its in-memory store is not thread-safe), the preconditions
  ifGenerationMatch (412 when it fails) and ifGenerationNotMatch (304), and every object answer
  with its x-goog-generation header (without which tensorstore reports "Malformed
  StorageGeneration")."""
  def wrapped(request, response, storage_, *args, **kwargs):
    from http import HTTPStatus

    with _ONE_AT_A_TIME:
      bucket = request.params.get("bucket_name")
      name = request.params.get("object_id") or (request.query.get("name") or [None])[0]
      current = _object(storage_, bucket, name)
      generation = str(current["generation"]) if current else "0"
      match = (request.query.get("ifGenerationMatch") or [None])[0]
      not_match = (request.query.get("ifGenerationNotMatch") or [None])[0]
      if name is None:  # a multipart upload names its object in the body: no check here
        match = not_match = None
      if match is not None and match != generation:
        response.status = HTTPStatus.PRECONDITION_FAILED
        return
      if not_match is not None and current and not_match == generation:
        response.status = HTTPStatus.NOT_MODIFIED
        response["x-goog-generation"] = generation
        return
      handler(request, response, storage_, *args, **kwargs)
      obj = _object(storage_, bucket, name)
      if obj is not None and response.status.value < 300:
        response["x-goog-generation"] = str(obj["generation"])
        response["x-goog-metageneration"] = str(obj["metageneration"])
  wrapped.patched = True
  return wrapped


@pytest.fixture(scope="module")
def gcs():
  import portpicker

  for _, methods in server_lib.HANDLERS:
    for method, handler in list(methods.items()):
      if not getattr(handler, "patched", False):
        methods[method] = _as_gcs(handler)
  port = portpicker.pick_unused_port()
  server = server_lib.create_server("127.0.0.1", port, in_memory=True, default_bucket=BUCKET)
  server.start()
  url = f"http://127.0.0.1:{port}"
  env = {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url,
         "GOOGLE_CLOUD_PROJECT": "test", "NO_GCE_CHECK": "True",  # no metadata-server probe
         # gcsfs's zonal-bucket probe speaks gRPC to the real endpoint: off for the emulator.
         "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}
  saved = {k: os.environ.get(k) for k in env}
  os.environ.update(env)
  try:
    from google.auth.credentials import AnonymousCredentials

    yield env, storage.Client(project="test", credentials=AnonymousCredentials()).bucket(BUCKET)
  finally:
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
    server.stop()


def _train(env, *args):
  return subprocess.run([sys.executable, "-m", "mebert.train", *args], cwd=REPO,
                        env={**subprocess_env(), **env}, capture_output=True, text=True,
                        timeout=600)


def _events(data: bytes) -> list[tuple[str, int, float]]:
  """(tag, step, value) of every scalar in a TensorBoard event file (TFRecord framing)."""
  from tensorboardX.proto import event_pb2

  out, pos = [], 0
  while pos < len(data):
    (length,) = struct.unpack("<Q", data[pos:pos + 8])
    event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
    pos += 12 + length + 4
    out += [(v.tag, event.step, v.simple_value) for v in event.summary.value]
  return out


def test_metrics_tensorboard_vocab_and_data_files_on_gs(gcs, tmp_path):
  """In this process: the metric writer (metrics.jsonl rewritten whole, tensorboardX's own GCS
  event writer), a sentencepiece vocabulary trained into gs:// and read back, and fine-tuning data
  files read by a gs:// glob."""
  from mebert.data.tokenizer import load_tokenizer, train_sentencepiece
  from mebert.tasks import data
  from mebert.tasks.defaults import finetune_defaults
  from mebert.train.metric_writer import MetricWriter

  _, bucket = gcs
  writer = MetricWriter(f"gs://{BUCKET}/fast", flush_secs=0)
  writer.write_scalars(1, {"loss": 2.5})
  writer.write_scalars(2, {"loss": 1.5, "accuracy": 0.5}, prefix="eval")
  writer.close()
  records = [json.loads(line) for line in
             bucket.blob("fast/metrics.jsonl").download_as_text().splitlines()]
  assert [(r["step"], r["split"]) for r in records] == [(1, "train"), (2, "eval")]
  events, = [b for b in bucket.list_blobs(prefix="fast/tensorboard/")]
  assert sorted((t, s, v) for t, s, v in _events(events.download_as_bytes())) == [
      ("eval/accuracy", 2, 0.5), ("eval/loss", 2, 1.5), ("train/loss", 1, 2.5)]

  texts = [f"the sentence number {i} of a small corpus about the moon and the sea" for i in range(200)]
  model = train_sentencepiece(texts, vocab_size=60, output_prefix=f"gs://{BUCKET}/fast/vocab/spm")
  assert model == f"gs://{BUCKET}/fast/vocab/spm.model"
  tokenizer = load_tokenizer(model)
  assert tokenizer.encode("the moon") and tokenizer.vocab_size <= 60

  bucket.blob("fast/data/a.tsv").upload_from_string("text\tlabel\ngood film\t1\nbad\t0\n")
  bucket.blob("fast/data/b.tsv").upload_from_string("text\tlabel\nfine\t1\n")
  c = finetune_defaults()
  c.task.text_column = "text"
  examples = data.read_examples(f"gs://{BUCKET}/fast/data/*.tsv", c.task, c.data)
  assert [(e.text, e.label, e.file.rsplit("/", 1)[1]) for e in examples] == [
      ("good film", "1", "a.tsv"), ("bad", "0", "a.tsv"), ("fine", "1", "b.tsv")]


@pytest.mark.slow  # three runs in subprocesses: ~2-5 minutes on 2 cores
def test_pretraining_in_a_gs_workdir(gcs):
  env, bucket = gcs
  workdir = f"gs://{BUCKET}/tiny"
  run = _train(env, "--config=configs/pretrain/tiny.py", f"--workdir={workdir}",
               "--config.train.num_steps=4", "--compilation_cache=none", *TINY)
  assert run.returncode == 0, run.stderr[-3000:]
  names = {b.name for b in bucket.list_blobs(prefix="tiny/")}
  assert "tiny/vocab/spm.model" in names
  assert any(n.startswith("tiny/checkpoints/3/") for n in names), sorted(names)
  assert any(n.startswith("tiny/checkpoints/4/") for n in names)
  records = [json.loads(line) for line in
             bucket.blob("tiny/metrics.jsonl").download_as_text().splitlines()]
  # A log window closes every 2 steps and before each checkpoint (every 3 steps).
  assert [r["step"] for r in records if r["split"] == "train"] == [2, 3, 4]
  events = [n for n in names if n.startswith("tiny/tensorboard/events.out.tfevents")]
  assert len(events) == 1, names
  scalars = _events(bucket.blob(events[0]).download_as_bytes())
  losses = {step: value for tag, step, value in scalars if tag == "train/loss"}
  assert sorted(losses) == [2, 3, 4] and losses[2] == pytest.approx(
      [r["loss"] for r in records if r["step"] == 2 and r["split"] == "train"][0], rel=1e-6)
  config = json.loads(bucket.blob("tiny/config.json").download_as_text())
  assert config["data"]["vocab"] == f"{workdir}/vocab/spm.model"  # the trained vocabulary

  # The checkpoints read back: --mode=eval restores step 4, a longer run resumes from it.
  evaluated = _train(env, f"--workdir={workdir}", "--mode=eval", "--compilation_cache=none")
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  assert json.loads(evaluated.stdout.strip().splitlines()[-1])["step"] == 4
  resumed = _train(env, "--config=configs/pretrain/tiny.py", f"--workdir={workdir}",
                   "--config.train.num_steps=6", "--compilation_cache=none", *TINY)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "resumed from checkpoint step 4" in resumed.stderr
  records = [json.loads(line) for line in
             bucket.blob("tiny/metrics.jsonl").download_as_text().splitlines()]
  assert [r["step"] for r in records if r["split"] == "train"] == [2, 3, 4, 6]  # kept, then added
