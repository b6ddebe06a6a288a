"""Benchmarks of mebert against Hugging Face BERT: the training step (`python -m mebert.bench`,
PyTorch and Flax peers), fine-tuning under one reporting rule (`mebert.bench.finetune_compare`),
and time to quality from scratch (`mebert.bench.pretrain`); results and their rules in
BENCHMARKS.md."""
