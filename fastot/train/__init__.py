"""Training loops of the thin layer: OT distillation (:func:`distill`)."""

from .distill import DistillConfig, distill, epoch_batches
from .models import MINILM, TINY, load_encoder, load_tokenizer, minilm_path

__all__ = ["MINILM", "TINY", "DistillConfig", "distill", "epoch_batches", "load_encoder", "load_tokenizer",
           "minilm_path"]
