"""quiktool: QUIK-style hybrid quantization (4-bit weights and activations, FP16 outlier channels)."""

__version__ = "0.1.0"
