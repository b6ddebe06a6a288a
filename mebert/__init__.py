"""mebert: BERT-family encoders in JAX/Flax, from pretraining to fine-tuning.

Importing mebert changes nothing process-wide: the host tuning its command-line entrypoints apply
(glibc's allocator, JAX's CPU dispatch) is opt-in, `mebert.host_memory.configure()`.
"""

__version__ = "0.1.0"
