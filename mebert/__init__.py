"""mebert: BERT-family encoders in JAX/Flax, from pretraining to fine-tuning."""

__version__ = "0.1.0"
