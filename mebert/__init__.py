"""mebert: BERT-family encoders in JAX/Flax, from pretraining to fine-tuning."""

from mebert import host_memory

host_memory.configure()  # before JAX starts its threads: see mebert/host_memory.py

__version__ = "0.1.0"
