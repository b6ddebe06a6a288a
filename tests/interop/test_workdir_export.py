"""The README's path: pretrain (a tiny run that trains its own sentencepiece vocabulary), then
`python -m mebert.interop export-hf --from=WORKDIR --to=DIR`: the saved config names the trained
vocabulary, so DIR holds a tokenizer, and transformers' AutoTokenizer and AutoModelForMaskedLM load
it and fill a mask with the model's own prediction."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

REPO = pathlib.Path(__file__).resolve().parents[2]
TINY = ["--config.model.hidden_size=32", "--config.model.num_layers=1", "--config.model.num_heads=2",
        "--config.model.intermediate_size=64", "--config.model.max_position_embeddings=64",
        "--config.data.vocab_size=400", "--config.data.seq_len=32",
        "--config.data.max_predictions_per_seq=5", "--config.train.batch_size=8",
        "--config.train.num_steps=3", "--config.train.warmup_steps=1",
        "--config.train.log_every=3", "--config.eval.every_steps=100", "--config.eval.num_batches=1",
        "--config.eval.batch_size=8"]


def _python(*args):
  import os

  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  return subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=600)


@pytest.mark.slow  # a pretraining run and an export in subprocesses: ~1-2 minutes on 2 cores
def test_exported_demo_workdir_loads_with_its_tokenizer_and_fills_a_mask(tmp_path):
  workdir, hf = tmp_path / "tiny", tmp_path / "hf"
  run = _python("mebert.train", "--config=configs/pretrain/tiny.py", f"--workdir={workdir}", *TINY)
  assert run.returncode == 0, run.stderr[-3000:]
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["data"]["vocab"] == str(workdir / "vocab" / "spm.model")
  export = _python("mebert.interop", "export-hf", f"--from={workdir}", f"--to={hf}")
  assert export.returncode == 0, export.stderr[-3000:]
  assert "no tokenizer file given" not in export.stdout + export.stderr
  tokenizer = transformers.AutoTokenizer.from_pretrained(hf)
  model = transformers.AutoModelForMaskedLM.from_pretrained(hf).eval()
  from mebert.data.tokenizer import load_tokenizer

  ours = load_tokenizer(str(workdir / "vocab" / "spm.model"))
  text = "The function returns a list of strings."
  assert tokenizer(text)["input_ids"] == [ours.cls_id] + ours.encode(text) + [ours.sep_id]
  masked = f"The function returns a {tokenizer.mask_token} of strings."
  fill = transformers.pipeline("fill-mask", model=model, tokenizer=tokenizer, top_k=3)(masked)
  assert len(fill) == 3 and all(tokenizer.mask_token not in f["sequence"] for f in fill)
  inputs = tokenizer(masked, return_tensors="pt")
  with torch.no_grad():
    logits = model(**inputs).logits[0]
  at = int(np.flatnonzero(inputs["input_ids"][0].numpy() == tokenizer.mask_token_id)[0])
  assert fill[0]["token"] == int(logits[at].argmax())  # the model's own best guess
