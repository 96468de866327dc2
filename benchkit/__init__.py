"""benchkit: compare tokenizers, generators and per-token heads of autoregressive image generation."""

__version__ = "0.1.0"
