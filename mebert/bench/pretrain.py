"""Time to quality, from scratch: mebert against Hugging Face transformers pretraining the same
bert-mini on the same text for the same wall-clock budget, scored by one evaluator.

  python -m mebert.bench.pretrain --corpus='DATA/gutenberg-nltk/*.txt' --out=runs/ttq \
      --budget-s=1800 --eval-every-s=120 [--sst2=DATA/sst2]

Stages, each skipped when its output is already in --out (so a run can be continued):
  1. data: the corpus (mebert's spec grammar: files, globs, --doc-separator) read as documents,
     a held-out part (--eval-fraction of the documents by mebert's document hash, or
     --eval-corpus) set aside; train.txt and heldout.txt written; a WordPiece vocabulary trained
     once on train.txt (mebert.bench.mlm_eval) for both; the held-out set of masked examples
     drawn once (the same masked positions for every checkpoint of both sides).
  2. calibration: a short run of each side measures its steps per second, so that each side's
     learning-rate schedule (warmup --warmup-ratio of its steps, then linear decay to 0) ends at
     the budget: each side trains as many steps as it can in the time, as a user with that budget
     would set it. --mebert-steps / --peer-steps fix the counts instead.
  3. mebert: `python -m mebert.train --config=configs/pretrain/mini.py` (bert-mini, MLM only)
     on train.txt with the vocabulary, alone, checkpointing every ~--eval-every-s of its
     training clock, stopped at the budget (mebert.bench.pretrain_mebert).
  4. the peer: transformers' BertForMaskedLM in PyTorch, alone, the same config, batch, masking
     rate, peak rate, warmup fraction and decay, on the same text and vocabulary, its examples
     padded per batch by its own collator (mebert.bench.pretrain_peer).
  5. evaluation: every checkpoint of both (mebert's exported with export-hf's code) scored by
     transformers' BertForMaskedLM on the held-out set: accuracy and loss against training seconds.
  6. with --sst2=DIR (GLUE's SST-2 folder): both final encoders fine-tuned with mebert's SST-2
     recipe, held-out accuracy at the last step (mebert.bench.pretrain_downstream).
Output in --out: result.json (curves, runs, comparison, SST-2), curves.png, and the table printed.
Both sides are masked-LM only (BertForMaskedLM; mebert's data.next_sentence="none"): the Gutenberg
and WikiText documents a user would point the recipe at are paragraphs, with few next sentences,
and MLM is what both frameworks' examples train. Training time excludes data preparation and
evaluation on both sides; it includes mebert's compilation and both sides' checkpoint saves.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys

from mebert import host_memory
from mebert.bench import mlm_eval, pretrain_downstream, pretrain_mebert, pretrain_report, timing

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RECIPE = os.path.join(REPO, "configs", "pretrain", "mini.py")


def _parse_args(argv):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                               formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
  ap.add_argument("--corpus", required=True, help="training text: files, globs, directories "
                  "(comma-separated; mebert's data.corpus grammar)")
  ap.add_argument("--out", required=True, help="the run's folder")
  ap.add_argument("--budget-s", type=float, default=1800.0, help="training seconds per side")
  ap.add_argument("--eval-every-s", type=float, default=120.0,
                  help="a checkpoint about every this many training seconds, each side")
  ap.add_argument("--doc-separator", default="", help="data.doc_separator for the corpus (a "
                  "regex; WikiText: ' ?= [^=].* = ?')")
  ap.add_argument("--eval-corpus", default="", help="held-out text (default: --eval-fraction of "
                  "the corpus's documents)")
  ap.add_argument("--eval-fraction", type=float, default=0.05,
                  help="of the documents, held out by mebert's document hash")
  ap.add_argument("--eval-examples", type=int, default=4000, help="held-out examples scored")
  ap.add_argument("--vocab-size", type=int, default=8192)
  ap.add_argument("--seq-len", type=int, default=128)
  ap.add_argument("--batch-size", type=int, default=32)
  ap.add_argument("--learning-rate", type=float, default=5e-4)
  ap.add_argument("--warmup-ratio", type=float, default=0.06)
  ap.add_argument("--mask-prob", type=float, default=0.15)
  ap.add_argument("--mebert-steps", type=int, default=0, help="fix mebert's step count (0: from "
                  "the calibration)")
  ap.add_argument("--peer-steps", type=int, default=0, help="fix the peer's step count")
  ap.add_argument("--calibration-steps", type=int, default=60)
  ap.add_argument("--mebert-override", action="append", default=[], metavar="KEY=VALUE",
                  help="another --config.KEY=VALUE for mebert's run, e.g. data.pack=false")
  ap.add_argument("--sst2", default="", help="a folder with SST-2's train.tsv: fine-tune both "
                  "final checkpoints on it")
  ap.add_argument("--sst2-override", action="append", default=[], metavar="KEY=VALUE",
                  help="a --config.KEY=VALUE of the SST-2 recipe, for both sides")
  ap.add_argument("--seed", type=int, default=0)
  return ap.parse_args(argv)


def _pairs(items: list[str], flag: str) -> dict:
  bad = [s for s in items if "=" not in s]
  if bad:
    raise SystemExit(f"{flag}={bad[0]!r}: expected KEY=VALUE")
  return dict(s.split("=", 1) for s in items)


def prepare_data(args, out: str) -> dict:
  """train.txt, heldout.txt, vocab/vocab.txt and eval_set.npz (stage 1)."""
  from mebert.data import corpora  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  info_path = os.path.join(out, "data.json")
  if os.path.isfile(info_path):
    with open(info_path, encoding="utf-8") as f:
      return json.load(f)
  corpus = corpora.load_corpus(args.corpus, doc_separator=args.doc_separator)
  if args.eval_corpus:
    train_docs = list(corpus.documents)
    heldout = list(corpora.load_corpus(args.eval_corpus,
                                       doc_separator=args.doc_separator).documents)
  else:
    train_ids, eval_ids = corpora.heldout_split(corpus, args.eval_fraction)
    train_docs = [corpus.documents[i] for i in train_ids]
    heldout = [corpus.documents[i] for i in eval_ids]
  train_text, heldout_text = os.path.join(out, "train.txt"), os.path.join(out, "heldout.txt")
  mlm_eval.write_documents(train_text, train_docs)
  mlm_eval.write_documents(heldout_text, heldout)
  vocab = mlm_eval.train_wordpiece(train_text, args.vocab_size, os.path.join(out, "vocab"))
  tokenizer = mlm_eval.hf_tokenizer(vocab)
  eval_set = mlm_eval.build_eval_set(heldout, tokenizer, args.seq_len, args.eval_examples,
                                     args.mask_prob, seed=args.seed)
  np.savez(os.path.join(out, "eval_set.npz"), **eval_set)
  info = {"corpus": args.corpus, "doc_separator": args.doc_separator,
          "eval_corpus": args.eval_corpus, "train_documents": len(train_docs),
          "heldout_documents": len(heldout), "train_chars": sum(map(len, train_docs)),
          "vocab": vocab, "vocab_size": len(tokenizer), "train_text": train_text,
          "heldout_text": heldout_text, "eval_examples": int(len(eval_set["labels"])),
          "eval_predictions": int((eval_set["labels"] >= 0).sum())}
  with open(info_path, "w", encoding="utf-8") as f:
    json.dump(info, f, indent=2)
  return info


def recipe(args, data: dict):
  """mebert's config (the recipe with the benchmark's settings) and the overrides that make it."""
  from mebert.bench.scaling import load_config  # pylint: disable=g-import-not-at-top

  overrides = {"data.corpus": data["train_text"], "data.eval_corpus": data["heldout_text"],
               "data.vocab": data["vocab"], "data.lowercase": True, "data.seq_len": args.seq_len,
               "data.masked_lm_prob": args.mask_prob, "data.next_sentence": "none",
               "train.batch_size": args.batch_size, "train.learning_rate": args.learning_rate,
               "train.log_every": 10, "checkpoint.best_metric": "", "checkpoint.keep": 100_000,
               "eval.every_steps": pretrain_mebert.NO_EVAL, "eval.num_batches": 5,
               "seed": args.seed, **_pairs(args.mebert_override, "--mebert-override")}
  config = load_config(RECIPE)
  for key, value in overrides.items():
    _set(config, key, value)
  return config, overrides


def _set(config, key: str, value) -> None:
  """config[key] = value as the key's type (what --config.KEY=VALUE does for mebert's run), so
  that the peer's settings follow every override."""
  section, _, name = key.rpartition(".")
  try:
    node = config[section] if section else config
    old = node[name]
  except (KeyError, AttributeError):
    raise SystemExit(f"{key}: not a key of {RECIPE}") from None
  if isinstance(old, bool):
    node[name] = str(value).lower() in ("1", "true")
  elif old is None or isinstance(value, type(old)):
    node[name] = value
  else:
    node[name] = type(old)(value)


def hf_config(config, vocab_size: int) -> dict:
  """The peer's BertConfig: mebert's model config as its exporter writes it."""
  from mebert.interop.hf_config import hf_config_from_model  # pylint: disable=g-import-not-at-top
  from mebert.model.config import ModelConfig  # pylint: disable=g-import-not-at-top

  cfg = ModelConfig.from_dict(config.model, vocab_size=vocab_size)
  return hf_config_from_model(cfg, "BertForMaskedLM")


def peer_spec(args, config, data: dict, num_steps: int, budget_s: float, every_s: float) -> dict:
  t = config.train
  return {"train_text": data["train_text"], "vocab": data["vocab"], "seq_len": args.seq_len,
          "batch_size": args.batch_size, "mask_prob": args.mask_prob, "seed": args.seed,
          "learning_rate": args.learning_rate, "warmup_steps": _warmup(args, num_steps),
          "num_steps": num_steps, "weight_decay": float(t.weight_decay), "b1": float(t.b1),
          "b2": float(t.b2), "eps": float(t.eps), "clip_grad_norm": float(t.clip_grad_norm),
          "hf_config": hf_config(config, data["vocab_size"]), "budget_s": budget_s,
          "checkpoint_every_s": every_s, "log_every": 10}


def _warmup(args, num_steps: int) -> int:
  return max(1, int(round(args.warmup_ratio * num_steps)))


def run_peer(spec: dict, out_dir: str, log_path: str) -> dict:
  os.makedirs(out_dir, exist_ok=True)
  spec_path = os.path.join(out_dir, "spec.json")
  with open(spec_path, "w", encoding="utf-8") as f:
    json.dump(spec, f, indent=2)
  cmd = [sys.executable, "-m", "mebert.bench.pretrain_peer", f"--spec={spec_path}",
         f"--out={out_dir}"]
  with open(log_path, "w", encoding="utf-8") as log:
    log.write(" ".join(shlex.quote(c) for c in cmd) + "\n")
    log.flush()
    proc = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
  if proc.returncode != 0:
    raise RuntimeError(f"the peer's run failed (exit {proc.returncode}); see {log_path}")
  with open(os.path.join(out_dir, "run.json"), encoding="utf-8") as f:
    return json.load(f)


def calibrate(args, config, overrides: dict, data: dict, out: str) -> dict:
  """Steps each side can train in the budget (stage 2), from a short run of each."""
  path = os.path.join(out, "calibration.json")
  if os.path.isfile(path):
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  n = args.calibration_steps
  result = {"calibration_steps": n}
  if not args.mebert_steps:
    workdir = os.path.join(out, "calibration", "mebert")
    shutil.rmtree(workdir, ignore_errors=True)
    cmd = pretrain_mebert.command(RECIPE, workdir, {
        **overrides, "train.num_steps": n, "train.warmup_steps": 1,
        "checkpoint.every_steps": pretrain_mebert.NO_EVAL})
    rate, startup = pretrain_mebert.calibrate(cmd, workdir, os.path.join(out, "calibration",
                                                                         "mebert.log"), REPO)
    result.update(mebert_steps_per_s=rate, mebert_startup_s=startup)
  if not args.peer_steps:
    peer_dir = os.path.join(out, "calibration", "peer")
    shutil.rmtree(peer_dir, ignore_errors=True)
    spec = peer_spec(args, config, data, n, float("inf"), float("inf"))
    run = run_peer(spec, peer_dir, os.path.join(out, "calibration", "peer.log"))
    with open(os.path.join(peer_dir, "log.jsonl"), encoding="utf-8") as f:
      lines = [json.loads(line) for line in f]
    first, last = lines[0], lines[-1]  # from the first log step: torch's first steps warm up
    result["peer_steps_per_s"] = ((last["step"] - first["step"])
                                  / (last["train_s"] - first["train_s"]))
    result["peer_calibration_run"] = {k: v for k, v in run.items() if k != "checkpoints"}
  with open(path, "w", encoding="utf-8") as f:
    json.dump(result, f, indent=2)
  return result


def step_counts(args, calibration: dict) -> tuple[int, int]:
  mebert = args.mebert_steps or int(
      (args.budget_s - calibration["mebert_startup_s"]) * calibration["mebert_steps_per_s"])
  peer = args.peer_steps or int(args.budget_s * calibration["peer_steps_per_s"])
  return max(mebert, 10), max(peer, 10)


def main(argv=None) -> dict:
  args = _parse_args(argv)
  host_memory.configure()  # before JAX starts: the opt-in host tuning (mebert/host_memory.py)
  out = os.path.abspath(args.out)
  os.makedirs(out, exist_ok=True)
  log = lambda msg: print(msg, file=sys.stderr, flush=True)
  machine = timing.machine()
  log(f"[data] {args.corpus}")
  data = prepare_data(args, out)
  config, overrides = recipe(args, data)
  calibration = calibrate(args, config, overrides, data, out)
  mebert_steps, peer_steps = step_counts(args, calibration)
  log(f"[steps] mebert {mebert_steps}, peer {peer_steps} in {args.budget_s:.0f} s each")

  runs_path = os.path.join(out, "runs.json")
  runs = {}
  if os.path.isfile(runs_path):
    with open(runs_path, encoding="utf-8") as f:
      runs = json.load(f)
  mebert_dir = os.path.join(out, "mebert")
  if "mebert" not in runs:
    rate = calibration.get("mebert_steps_per_s") or mebert_steps / args.budget_s
    every = max(10, int(round(args.eval_every_s * rate / 10)) * 10)  # a multiple of log_every
    shutil.rmtree(mebert_dir, ignore_errors=True)
    cmd = pretrain_mebert.command(RECIPE, mebert_dir, {
        **overrides, "train.num_steps": mebert_steps,
        "train.warmup_steps": _warmup(args, mebert_steps), "checkpoint.every_steps": every})
    log(f"[mebert] {' '.join(shlex.quote(c) for c in cmd)}")
    runs["mebert"] = pretrain_mebert.run(cmd, mebert_dir, args.budget_s,
                                         os.path.join(out, "mebert.log"), REPO)
    runs["mebert"]["command"] = cmd
    with open(runs_path, "w", encoding="utf-8") as f:
      json.dump(runs, f, indent=2)
  if "peer" not in runs:
    peer_dir = os.path.join(out, "peer")
    shutil.rmtree(peer_dir, ignore_errors=True)
    log(f"[peer] transformers BertForMaskedLM, {peer_steps} steps at most")
    runs["peer"] = run_peer(peer_spec(args, config, data, peer_steps, args.budget_s,
                                      args.eval_every_s), peer_dir, os.path.join(out, "peer.log"))
    with open(runs_path, "w", encoding="utf-8") as f:
      json.dump(runs, f, indent=2)

  log("[eval] every checkpoint of both, through transformers on the held-out set")
  eval_set = pretrain_report.load_eval_set(os.path.join(out, "eval_set.npz"))
  cache = os.path.join(out, "evals.json")
  mebert_points = runs["mebert"]["checkpoints"]
  folders = pretrain_report.export_mebert(mebert_dir, [p["step"] for p in mebert_points],
                                          os.path.join(out, "mebert_hf"))
  curves = {"mebert": pretrain_report.evaluate_points(mebert_points, folders, eval_set, cache)}
  peer_points = runs["peer"]["checkpoints"]
  curves["peer"] = pretrain_report.evaluate_points(
      peer_points, {p["step"]: p["folder"] for p in peer_points}, eval_set, cache)
  size = config.model
  result = {"model": f"BERT {size.num_layers} x {size.hidden_size} ({size.num_heads} heads)",
            "budget_s": args.budget_s, "data": data,
            "calibration": calibration, "steps_planned": {"mebert": mebert_steps,
                                                          "peer": peer_steps},
            "recipe": {"batch_size": args.batch_size, "seq_len": args.seq_len,
                       "mebert_data_pack": config.data.get("pack"),
                       "learning_rate": args.learning_rate, "warmup_ratio": args.warmup_ratio,
                       "decay": "linear to 0 at each side's planned steps",
                       "mask_prob": args.mask_prob, "task": "masked LM only",
                       "mebert_overrides": overrides},
            "runs": runs, "curves": curves, "comparison": pretrain_report.compare(curves),
            "eval_predictions": data["eval_predictions"], "machine": machine,
            "command": "python -m mebert.bench.pretrain " + " ".join(
                shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))}
  if args.sst2:
    result["sst2"] = _sst2(args, out, folders[mebert_points[-1]["step"]],
                           peer_points[-1]["folder"], log)
  timing.write_json(os.path.join(out, "result.json"), result)
  pretrain_report.plot(curves, result["comparison"], os.path.join(out, "curves.png"),
                       f"{result['model']} from scratch on {os.path.basename(args.corpus)}, "
                       f"{args.budget_s:.0f} s per side")
  print(pretrain_report.table(result))
  log(f"[done] {out}/result.json, {out}/curves.png")
  return result


def _sst2(args, out: str, mebert_folder: str, peer_folder: str, log) -> dict:
  overrides = _pairs(args.sst2_override, "--sst2-override")
  results = {}
  for side, folder in (("mebert", mebert_folder), ("peer", peer_folder)):
    log(f"[sst2] fine-tuning {side}'s final encoder")
    encoder = pretrain_downstream.encoder_copy(folder, os.path.join(out, "sst2", f"{side}_encoder"))
    results[side] = pretrain_downstream.finetune(
        encoder, os.path.abspath(args.sst2), os.path.join(out, "sst2", side), REPO, overrides,
        os.path.join(out, "sst2", f"{side}.log"))
  results["recipe"] = {"config": "configs/finetune/sst2.py", "overrides": overrides,
                       "early_stopping": "off", "reported": "held-out accuracy at the last step"}
  return results


if __name__ == "__main__":
  main()
