"""The Hugging Face side of the time-to-quality benchmark: BertForMaskedLM from scratch, PyTorch.

  python -m mebert.bench.pretrain_peer --spec=SPEC.json --out=DIR

What a Hugging Face user writes (transformers' run_mlm examples, with a plain loop): the training
documents tokenized by BertTokenizerFast on the shared vocabulary, each cut into [CLS] piece [SEP]
examples (mebert.bench.mlm_eval.document_examples), shuffled each epoch by a DataLoader,
batched and masked by transformers' own DataCollatorForLanguageModeling (15%, 80/10/10, padding
each batch to its longest), AdamW with BERT's decay groups, get_linear_schedule_with_warmup and
global-norm clipping, fp32, all CPU threads. The model's config is mebert's bert-mini's, written
by mebert's exporter (the same sizes, activation, epsilon, initialiser range, dropout).

The clock counts the training loop only: each step's batch (collation and masking included),
forward, backward and update, and the checkpoint saves (model.save_pretrained every
checkpoint_every_s seconds of that clock, as mebert's loop counts its own saves); tokenizing
before the loop and evaluation (afterwards, by mebert.bench.pretrain) are not counted. The run
stops at num_steps or when the clock reaches budget_s, whichever comes first, and saves there.
DIR gets checkpoints/<step>/ (Hugging Face folders), log.jsonl (step, train_s, loss every
log_every steps) and run.json (the checkpoints with their train_s, and run facts).
"""

from __future__ import annotations

import argparse
import json
import os
import time

from mebert import host_memory
from mebert.bench import mlm_eval


def _optimizer(model, spec: dict):
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  no_decay = lambda n: "LayerNorm" in n or n.endswith("bias")
  groups = [{"params": [p for n, p in model.named_parameters() if not no_decay(n)],
             "weight_decay": float(spec["weight_decay"])},
            {"params": [p for n, p in model.named_parameters() if no_decay(n)],
             "weight_decay": 0.0}]
  opt = torch.optim.AdamW(groups, lr=float(spec["learning_rate"]), betas=(spec["b1"], spec["b2"]),
                          eps=float(spec["eps"]))
  sched = transformers.get_linear_schedule_with_warmup(opt, int(spec["warmup_steps"]),
                                                       int(spec["num_steps"]))
  return opt, sched, [p for g in groups for p in g["params"]]


def run(spec: dict, out_dir: str) -> dict:
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  torch.set_num_threads(os.cpu_count() or 1)
  torch.manual_seed(int(spec["seed"]))
  tokenizer = mlm_eval.hf_tokenizer(spec["vocab"])
  t = time.perf_counter()
  examples = mlm_eval.document_examples(mlm_eval.read_documents(spec["train_text"]), tokenizer,
                                        int(spec["seq_len"]))
  tokenize_s = time.perf_counter() - t
  if len(examples) < int(spec["batch_size"]):
    raise ValueError(f"{spec['train_text']}: {len(examples)} examples, fewer than one batch")
  config = transformers.BertConfig(**spec["hf_config"])
  model = transformers.BertForMaskedLM(config)
  model.train()
  collator = transformers.DataCollatorForLanguageModeling(
      tokenizer, mlm_probability=float(spec["mask_prob"]))
  # As transformers' run_mlm.py: the collator is faster given each example's special-token mask.
  data = [{"input_ids": ids, "special_tokens_mask": tokenizer.get_special_tokens_mask(
      ids, already_has_special_tokens=True)} for ids in examples]
  loader = torch.utils.data.DataLoader(
      data, batch_size=int(spec["batch_size"]), shuffle=True, drop_last=True,
      collate_fn=collator, generator=torch.Generator().manual_seed(int(spec["seed"])))
  opt, sched, params = _optimizer(model, spec)
  num_steps, budget = int(spec["num_steps"]), float(spec["budget_s"])
  every, log_every = float(spec["checkpoint_every_s"]), int(spec["log_every"])
  os.makedirs(os.path.join(out_dir, "checkpoints"), exist_ok=True)
  checkpoints, step, train_s, save_s = [], 0, 0.0, 0.0
  next_save, slots, real = every, 0, 0
  log = open(os.path.join(out_dir, "log.jsonl"), "w", encoding="utf-8")

  def save() -> None:
    nonlocal train_s, save_s
    start = time.perf_counter()
    folder = os.path.join(out_dir, "checkpoints", str(step))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    spent = time.perf_counter() - start
    train_s, save_s = train_s + spent, save_s + spent
    checkpoints.append({"step": step, "train_s": train_s, "folder": folder})

  done = False
  while not done:
    batches = iter(loader)
    while True:
      start = time.perf_counter()
      batch = next(batches, None)
      if batch is None:
        break  # the next epoch: a fresh shuffle
      loss = model(**batch).loss
      loss.backward()
      torch.nn.utils.clip_grad_norm_(params, float(spec["clip_grad_norm"]))
      opt.step()
      sched.step()
      opt.zero_grad(set_to_none=True)
      step += 1
      slots += batch["input_ids"].numel()
      real += int(batch["attention_mask"].sum())
      train_s += time.perf_counter() - start
      if step % log_every == 0:
        log.write(json.dumps({"step": step, "train_s": train_s, "loss": float(loss)}) + "\n")
        log.flush()
      done = step >= num_steps or train_s >= budget
      if done or train_s >= next_save:
        save()
        next_save = train_s + every
      if done:
        break
  log.close()
  record = {"framework": "transformers (PyTorch)", "torch": torch.__version__,
            "transformers": transformers.__version__, "threads": torch.get_num_threads(),
            "steps": step, "train_s": train_s, "save_s": save_s, "tokenize_s": tokenize_s,
            "examples": len(examples), "epochs": step * int(spec["batch_size"]) / len(examples),
            "padding_fraction": 1.0 - real / max(slots, 1), "checkpoints": checkpoints,
            "stopped_by": "num_steps" if step >= num_steps else "budget"}
  with open(os.path.join(out_dir, "run.json"), "w", encoding="utf-8") as f:
    json.dump(record, f, indent=2)
  return record


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--spec", required=True, help="JSON written by mebert.bench.pretrain")
  ap.add_argument("--out", required=True, help="folder for checkpoints/, log.jsonl, run.json")
  args = ap.parse_args(argv)
  host_memory.configure(jax_dispatch=False)  # the same allocator as mebert's side
  with open(args.spec, encoding="utf-8") as f:
    spec = json.load(f)
  record = run(spec, args.out)
  print(json.dumps({k: v for k, v in record.items() if k != "checkpoints"}, sort_keys=True))


if __name__ == "__main__":
  main()
