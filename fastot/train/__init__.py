"""Training loops of the thin layer: OT distillation (:func:`distill`), and reranker training data built from
the English side of a bitext (:func:`build_training_examples`)."""

from .distill import DistillConfig, distill, epoch_batches, read_pairs
from .models import MINILM, TINY, load_encoder, load_tokenizer, minilm_path
from .pairs import TrainingExample, build_training_examples, content_words

__all__ = ["MINILM", "TINY", "DistillConfig", "TrainingExample", "build_training_examples", "content_words", "distill",
           "epoch_batches", "load_encoder", "load_tokenizer", "minilm_path", "read_pairs"]
