"""Plain PyTorch implementations of every op: the laptop fallback and the test oracle."""

from . import codeswitch, sinkhorn

__all__ = ["codeswitch", "sinkhorn"]
