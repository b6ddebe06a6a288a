"""The families' timed comparisons, to run on a quiet machine (numbers from a loaded one mislead).

  # Tiny ELECTRA against tiny BERT (MLM + NSP) at equal pretraining wall time on the built-in
  # corpus and one shared vocabulary, each then fine-tuned on SST-2 with the same recipe:
  python -m mebert.experiments.families electra_vs_bert --runs=runs/fam --seconds=900 \
      --sst2_train=PATH/sst2/train.tsv --seeds=0,1,2
  # Train-step time of the ModernBERT-style tiny model with its local/global pattern against
  # global attention everywhere, at several lengths:
  python -m mebert.experiments.families local_attention --lengths=512,1024,2048

electra_vs_bert: the two configs are configs/pretrain/tiny.py (BERT, 2 x 128) and
configs/pretrain/electra_small.py:tiny (a 2 x 128 discriminator, 64-wide embeddings, a 32-wide
generator). Equal wall time: each model's train step is timed (after compiling) on a real batch,
and its num_steps set to seconds x steps/s, warmup 10% of it; the runs then train for real
(the reported pretraining seconds include data and evals, and are printed). Fine-tuning: SST-2's
train.tsv with 5% held out by source sentence (data.holdout_group="containment", as
configs/finetune/sst2.py: no held-out phrase occurs inside a training example),
one epoch, AdamW --ft_lr, batch 32, 6% warmup, the same for both; the encoder comes from the
pretraining workdir (init.checkpoint), the head is each family's own (BERT: tanh pooler and
classifier; ELECTRA: dense, gelu, out_proj). Prints one JSON line per run and a table.

local_attention: configs/pretrain/modernbert_base.py:tiny (4 layers, global 0 and 3, a 128-token
window in 1 and 2) and the same with local_attention_window=0, at each length with --batch rows
of synthetic tokens (30% masked); rounds interleave the variants so a change of machine load does
not land on one of them. Local layers run the blocked computation (mebert.model.local_attention),
whose cost grows linearly with length; global layers' grows quadratically.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import pathlib
import time

from absl import app, flags

_RUNS = flags.DEFINE_string("runs", "runs/families", "Folder for the workdirs.")
_SECONDS = flags.DEFINE_float("seconds", 900.0, "Pretraining wall-time budget per model.")
_CALIBRATION = flags.DEFINE_integer("calibration_steps", 10, "Timed steps to estimate steps/s.")
_SST2 = flags.DEFINE_string("sst2_train", "", "SST-2 train.tsv (sentence<TAB>label, a header).")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Fine-tuning seeds.")
_FT_LR = flags.DEFINE_float("ft_lr", 1e-4, "Fine-tuning peak learning rate (both models).")
_FT_LIMIT = flags.DEFINE_integer("ft_max_train_examples", 0, "> 0: a slice (smoke runs).")
_LENGTHS = flags.DEFINE_list("lengths", ["512", "1024", "2048"], "Sequence lengths to time.")
_BATCH = flags.DEFINE_integer("batch", 4, "Rows per timed step.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Timing rounds (every variant in turn).")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps per variant per round.")

log = logging.getLogger("mebert.experiments.families")
REPO = pathlib.Path(__file__).resolve().parents[2]


def load_config(name: str, arg: str | None = None):
  """configs/pretrain/<name>'s get_config(arg)."""
  spec = importlib.util.spec_from_file_location(name.removesuffix(".py"),
                                                REPO / "configs" / "pretrain" / name)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def steps_per_second(config, workdir: str, steps: int) -> float:
  """Train steps per second of `config`'s model on one real batch, after compiling."""
  import jax  # pylint: disable=g-import-not-at-top

  from mebert.parallel import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from mebert.train import trainer  # pylint: disable=g-import-not-at-top

  exp = trainer.Experiment(config, workdir)
  iterator = exp.data_iterator("train")
  batch = mesh_lib.global_batch(trainer._model_batch(next(iterator)), exp.mesh)  # pylint: disable=protected-access
  trainer._close(iterator)  # pylint: disable=protected-access
  step = exp.jitted_train_step()
  with exp.sharding_context():
    state, metrics = step(exp.init_state(), batch)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(steps):
      state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
  return steps / (time.perf_counter() - start)


def pretrain(name: str, config, runs: pathlib.Path, vocab: str) -> dict:
  from mebert.train import trainer  # pylint: disable=g-import-not-at-top

  workdir = runs / name
  config.data.vocab = vocab
  sps = steps_per_second(config, str(runs / f"{name}_calibration"), _CALIBRATION.value)
  steps = max(10, int(_SECONDS.value * sps))
  config.train.num_steps, config.train.warmup_steps = steps, max(1, steps // 10)
  config.checkpoint.every_steps = config.eval.every_steps = steps
  start = time.perf_counter()
  final = trainer.train_and_evaluate(config, str(workdir))
  record = {"model": name, "steps_per_s": sps, "steps": steps,
            "pretrain_seconds": time.perf_counter() - start,
            **{k: final[k] for k in ("mlm_accuracy", "rtd_accuracy") if k in final}}
  print(json.dumps(record), flush=True)
  return record


def finetune_sst2(workdir: pathlib.Path, seed: int) -> float:
  from mebert.tasks import finetune  # pylint: disable=g-import-not-at-top
  from mebert.tasks.defaults import finetune_defaults  # pylint: disable=g-import-not-at-top

  c = finetune_defaults()
  c.seed = seed
  c.task.kind = "classification"
  c.init.checkpoint = str(workdir)
  c.data.train_files = _SST2.value
  # SST-2's train.tsv holds every phrase of a sentence: hold out whole source sentences with their
  # phrases (as configs/finetune/sst2.py), or the held-out accuracy is partly memorised.
  c.data.holdout_fraction, c.data.holdout_group = 0.05, "containment"
  c.data.seq_len = 128
  c.data.max_train_examples = _FT_LIMIT.value
  c.train.num_epochs, c.train.learning_rate, c.train.batch_size = 1.0, _FT_LR.value, 32
  c.train.warmup_ratio = 0.06
  c.early_stopping.metric = "accuracy"
  out = workdir.parent / f"{workdir.name}_sst2_seed{seed}"
  return float(finetune.train_and_evaluate(c, str(out))["accuracy"])


def electra_vs_bert() -> None:
  from mebert.data.tokenizer import ensure_tokenizer  # pylint: disable=g-import-not-at-top

  if not _SST2.value:
    raise SystemExit("error: --sst2_train=PATH/sst2/train.tsv is needed for the fine-tuning")
  runs = pathlib.Path(_RUNS.value)
  bert, electra = load_config("tiny.py"), load_config("electra_small.py", "tiny")
  ensure_tokenizer(bert.data, str(runs / "vocab_owner"))  # one vocabulary for both
  vocab = str(runs / "vocab_owner" / "vocab" / "spm.model")
  rows = []
  for name, config in (("bert", bert), ("electra", electra)):
    record = pretrain(name, config, runs, vocab)
    record["sst2"] = [finetune_sst2(runs / name, int(s)) for s in _SEEDS.value]
    print(json.dumps(record), flush=True)
    rows.append(record)
  print("\n| model | pretraining steps (s) | held-out SST-2 accuracy per seed | mean |")
  print("|---|---|---|---|")
  for r in rows:
    accs = r["sst2"]
    print(f"| {r['model']} | {r['steps']} ({r['pretrain_seconds']:.0f} s) | "
          f"{', '.join(f'{a:.4f}' for a in accs)} | {sum(accs) / len(accs):.4f} |")


def local_attention() -> None:
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from mebert.model.config import ModelConfig  # pylint: disable=g-import-not-at-top
  from mebert.model.pretraining import BertForPreTraining  # pylint: disable=g-import-not-at-top
  from mebert.train import optimizer, steps  # pylint: disable=g-import-not-at-top

  config = load_config("modernbert_base.py", "tiny")
  local_cfg = ModelConfig.from_dict(config.model, vocab_size=int(config.data.vocab_size))
  variants = {"local": local_cfg, "global": local_cfg.replace(local_attention_window=0)}
  tx, schedule = optimizer.make_optimizer(config.train), optimizer.learning_rate_schedule(config.train)
  rng = np.random.default_rng(0)
  setups = {}
  for length in (int(x) for x in _LENGTHS.value):
    preds = int(0.3 * length)
    batch = {"input_ids": rng.integers(5, local_cfg.vocab_size, (_BATCH.value, length)),
             "token_type_ids": np.zeros((_BATCH.value, length)),
             "segment_ids": np.ones((_BATCH.value, length)),
             "positions": np.tile(np.arange(length), (_BATCH.value, 1)),
             "masked_lm_positions": np.sort(rng.permuted(np.tile(np.arange(length), (
                 _BATCH.value, 1)), axis=1)[:, :preds], axis=1),
             "masked_lm_ids": rng.integers(5, local_cfg.vocab_size, (_BATCH.value, preds)),
             "masked_lm_weights": np.ones((_BATCH.value, preds), np.float32),
             "next_sentence_labels": -np.ones(_BATCH.value)}
    batch = {k: jnp.asarray(v, jnp.float32 if k == "masked_lm_weights" else jnp.int32)
             for k, v in batch.items()}
    for name, cfg in variants.items():
      init = functools.partial(steps.init_train_state, model=BertForPreTraining(cfg), tx=tx,
                               example_batch=jax.tree.map(lambda x: x[:1], batch))
      state = jax.jit(lambda r, init=init: nn.unbox(init(r)))(jax.random.key(0))
      step = jax.jit(functools.partial(steps.train_step, model=BertForPreTraining(cfg, False),
                                       tx=tx, schedule=schedule, seed=0), donate_argnums=0)
      state, metrics = step(state, batch)  # compile
      jax.block_until_ready(metrics)
      setups[(length, name)] = [step, state, batch, []]
  for _ in range(_ROUNDS.value):
    for key, setup in setups.items():
      step, state, batch, times = setup
      for _ in range(_STEPS.value):
        start = time.perf_counter()
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
      setup[1] = state
  print(f"\nModernBERT-style tiny ({local_cfg.num_layers} layers x {local_cfg.hidden_size}, window "
        f"{local_cfg.local_attention_window}, global every {local_cfg.global_attention_every}), "
        f"batch {_BATCH.value}, median train step over {_ROUNDS.value} x {_STEPS.value} steps")
  print("| tokens | local/global pattern (ms) | global everywhere (ms) | global / local |")
  print("|---|---|---|---|")
  for length in (int(x) for x in _LENGTHS.value):
    local_ms = 1000 * float(np.median(setups[(length, "local")][3]))
    global_ms = 1000 * float(np.median(setups[(length, "global")][3]))
    print(f"| {length} | {local_ms:.1f} | {global_ms:.1f} | {global_ms / local_ms:.2f} |")
    print(json.dumps({"seq_len": length, "local_ms": local_ms, "global_ms": global_ms}), flush=True)


def main(argv):
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
  logging.getLogger("absl").setLevel(logging.WARNING)
  commands = {"electra_vs_bert": electra_vs_bert, "local_attention": local_attention}
  if len(argv) != 2 or argv[1] not in commands:
    raise SystemExit(f"usage: python -m mebert.experiments.families {{{','.join(commands)}}} "
                     "[--flags]")
  commands[argv[1]]()


if __name__ == "__main__":
  app.run(main)
