"""Training loops of the thin layer: OT distillation (:func:`distill`), code-switched reranker training
(:func:`train_reranker`), and reranker training data built from the English side of a bitext
(:func:`build_training_examples`)."""

from .distill import DistillConfig, distill, epoch_batches, read_pairs
from .models import MINILM, TINY, load_cross_encoder, load_encoder, load_tokenizer, minilm_path
from .pairs import TrainingExample, build_training_examples, content_words, sample_query
from .rerank import RerankConfig, train_reranker

__all__ = ["MINILM", "TINY", "DistillConfig", "RerankConfig", "TrainingExample", "build_training_examples",
           "content_words", "distill", "epoch_batches", "load_cross_encoder", "load_encoder", "load_tokenizer",
           "minilm_path", "read_pairs", "sample_query", "train_reranker"]
