"""Compressing trained encoders for inference.

  quantize.py    post-training int8 weights (per output channel, symmetric; embedding tables per
                 row), dequantized inside the jitted forward pass; weight-bytes accounting; the
                 int8 paths of mebert.embed, fine-tuned eval/predict and pretraining eval. The
                 arithmetic lives below every user of it, in mebert.model.int8 (re-exported
                 here); quantization-aware fine-tuning (config.train.quantize_aware=int8) is
                 mebert.model.qat, applied by mebert.tasks.quantized
  bench_int8.py  python -m mebert.compress.bench_int8: MiniLM int8 vs fp32 embeddings (cosine,
                 weight bytes, sentences/s)
  distill.py     task distillation (configs with a `distill` section): teacher (fine-tuning workdir
                 or HF folder), student (teacher layers or config.model), the fine-tuning loop with
                 the distillation step; the workdir is the student's fine-tuning workdir
  distill_steps.py  the soft/hard/hidden/attention losses, the projection, the jitted step
  bench_distill.py  python -m mebert.compress.bench_distill: student vs teacher inference cost
                 (eval time, examples/s, FLOPs per example) on the held-out split
"""
