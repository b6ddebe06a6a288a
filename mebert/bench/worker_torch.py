"""Times the PyTorch peer: Hugging Face transformers' `BertForPreTraining`, fp32, AdamW.

  python -m mebert.bench.worker_torch --spec=SPEC.json --batches=B.npz --out=OUT.json

The same sizes, dropout and batches as mebert; BERT's AdamW (lr 1e-4, betas 0.9/0.999, eps 1e-6,
weight decay 0.01 except LayerNorm and biases) and global-norm clipping at 1.0, as mebert's
defaults; all CPU threads. Its MLM head runs at every position (labels -100 where nothing is
predicted), as Hugging Face's model does.
"""

from __future__ import annotations

import os
import time

from mebert.bench import batches as batches_lib
from mebert.bench import timing


def run(spec: dict, batch_path: str) -> dict:
  import torch
  import transformers

  rss_start = timing.current_rss_mb()
  torch.set_num_threads(os.cpu_count())
  torch.manual_seed(0)
  use_cuda = torch.cuda.is_available() and spec.get("torch_device", "auto") != "cpu"
  device = torch.device("cuda" if use_cuda else "cpu")
  size = spec["size"]
  config = transformers.BertConfig(
      vocab_size=spec["vocab_size"], hidden_size=size["hidden_size"],
      num_hidden_layers=size["num_layers"], num_attention_heads=size["num_heads"],
      intermediate_size=size["intermediate_size"], hidden_act="gelu",
      max_position_embeddings=max(512, spec["seq_len"]), type_vocab_size=2,
      hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, layer_norm_eps=1e-12)
  model = transformers.BertForPreTraining(config).to(device)
  model.train()
  decay = [p for n, p in model.named_parameters() if not ("LayerNorm" in n or n.endswith("bias"))]
  no_decay = [p for n, p in model.named_parameters() if "LayerNorm" in n or n.endswith("bias")]
  opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                           {"params": no_decay, "weight_decay": 0.0}],
                          lr=1e-4, betas=(0.9, 0.999), eps=1e-6)
  host_batches = batches_lib.load(batch_path, "peer")
  device_batches = [{k: torch.from_numpy(v).to(device) for k, v in b.items()} for b in host_batches]
  params = list(model.parameters())
  holder = {}

  def run_steps(n: int, first: int = 0) -> None:
    for i in range(n):
      loss = model(**device_batches[(first + i) % len(device_batches)]).loss
      loss.backward()
      torch.nn.utils.clip_grad_norm_(params, 1.0)
      opt.step()
      opt.zero_grad(set_to_none=True)
    if use_cuda:
      torch.cuda.synchronize()
    holder["loss"] = float(loss.detach())

  out = {"torch": torch.__version__, "transformers": transformers.__version__,
         "threads": torch.get_num_threads(), "device": str(device),
         "attn_implementation": getattr(model.config, "_attn_implementation", None)}
  start = time.perf_counter()
  run_steps(1)
  out["first_step_s"] = time.perf_counter() - start
  # One pass over every batch before timing (the text case's batches differ in length).
  run_steps(max(spec["warmup"] - 1, len(device_batches)), first=1)
  between_rounds = None
  n = int(spec.get("peak_size", 4096))
  if device.type == "cpu" and n > 0:  # as mebert's worker: best of 3, then between the rounds
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b

    def matmul(repeats: int, best: bool = False) -> float:
      return timing.product_rate(lambda: a @ b, 2 * n**3, repeats, best)

    out["matmul_flops_per_s_best_of_3"] = matmul(3, best=True)
    between_rounds = lambda: matmul(2)
  out.update(timing.timed_rounds(run_steps, steps=spec["steps"], rounds=spec["rounds"],
                                 between_rounds=between_rounds))
  out["final_loss"] = holder["loss"]
  if between_rounds is not None:
    out["matmul_readings_flops_per_s"] = out.pop("between_rounds_readings")
    out["matmul_flops_per_s"] = max(out["matmul_readings_flops_per_s"]
                                    + [out["matmul_flops_per_s_best_of_3"]])
  if device.type != "cpu":
    out["device_peak_bytes"] = torch.cuda.max_memory_allocated()
  out["peak_rss_mb"] = timing.peak_rss_mb()
  out["rss_at_start_mb"] = rss_start
  return out


def main(argv=None) -> None:
  timing.worker_main(run, __doc__.split("\n")[0], argv, jax_dispatch=False)


if __name__ == "__main__":
  main()
