"""Training-step benchmarks of mebert against Hugging Face BERT (PyTorch and Flax): `python -m
mebert.bench --help`; results and how to read them in BENCHMARKS.md."""
