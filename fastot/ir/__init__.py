"""Retrieval utilities around the ops: data readers (bitext, queries, collections, qrels, runs), BM25 first-stage
retrieval, dense encoding and bitext retrieval evaluation, retrieval metrics and paired significance tests."""

from .data import read_bitext, read_collection, read_qrels, read_queries, read_triples, write_run
from .metrics import DEFAULT_METRICS, evaluate
from .retrieval import encode, evaluate_bitext, mean_pool

__all__ = ["DEFAULT_METRICS", "encode", "evaluate", "evaluate_bitext", "mean_pool", "read_bitext", "read_collection",
           "read_qrels", "read_queries", "read_triples", "write_run"]
