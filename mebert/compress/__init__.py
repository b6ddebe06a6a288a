"""Compressing trained encoders for inference.

  quantize.py   post-training int8 weights (per output channel, symmetric), dequantized inside the
                jitted forward pass; weight-bytes accounting
"""
