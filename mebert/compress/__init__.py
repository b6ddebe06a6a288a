"""Compressing trained encoders for inference.

  quantize.py    post-training int8 weights (per output channel, symmetric; embedding tables per
                 row), dequantized inside the jitted forward pass; weight-bytes accounting; the
                 int8 paths of mebert.embed, fine-tuned eval/predict and pretraining eval
  bench_int8.py  python -m mebert.compress.bench_int8: MiniLM int8 vs fp32 embeddings (cosine,
                 weight bytes, sentences/s)
"""
