"""Dense retrieval with a Hugging Face encoder: mean-pooled sentence embeddings, cosine scores, metrics.

The cross-lingual evaluation of the distillation issue: queries are the English side of a held-out bitext
split, the collection is every target-language sentence of that split, and the one relevant document of query
i is its translation, sentence i.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from . import metrics as _metrics


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, L, d], [B, L] -> [B, d]: the mean of the hidden states over the tokens where ``mask`` is set."""
    m = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1)


@torch.no_grad()
def encode(model, tokenizer, texts: Sequence[str], *, batch_size: int = 64, max_length: int = 128,
           device: torch.device | str | None = None, normalize: bool = True, progress: bool = False,
           desc: str = "encode") -> torch.Tensor:
    """Sentence embeddings [len(texts), d] float32 on the CPU: mean over the attention mask of the last hidden
    state (the sentence-transformers pooling of MiniLM), unit length when ``normalize``.

    Sentences are encoded longest first in batches (less padding); the output keeps the input order.
    The model is put in eval mode for the call and restored afterwards.
    """
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise TypeError("texts: expected a sequence of strings")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected an integer >= 1, got {batch_size!r}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    out = torch.empty(len(texts), model.config.hidden_size, dtype=torch.float32)
    starts = range(0, len(texts), batch_size)
    if progress:
        from tqdm.auto import tqdm  # noqa: PLC0415

        starts = tqdm(starts, desc=desc, unit="batch", leave=False)
    try:
        for s in starts:
            idx = order[s:s + batch_size]
            enc = tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=max_length,
                            return_tensors="pt").to(device)
            hidden = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
            emb = mean_pool(hidden.float(), enc["attention_mask"])
            if normalize:
                emb = torch.nn.functional.normalize(emb, dim=-1)
            out[idx] = emb.cpu()
    finally:
        model.train(was_training)
    return out


def evaluate_bitext(model, tokenizer, queries: Sequence[str], documents: Sequence[str], *,
                    query_model=None, query_tokenizer=None, metrics: Sequence[str] = _metrics.DEFAULT_METRICS,
                    batch_size: int = 64, max_length: int = 128, device=None, progress: bool = False,
                    per_query: bool = False, distributed: bool = False):
    """Cross-lingual retrieval on a bitext split: query i (English) has document i (its translation) as its
    one relevant document among all ``documents``; cosine of mean-pooled embeddings.

    Args:
        model, tokenizer: encode the documents (and the queries unless ``query_model`` is given).
        queries, documents: the two sides of the split, line-aligned, same length.
        query_model, query_tokenizer: a separate query encoder (e.g. the English teacher).
        metrics: names understood by :func:`fastot.ir.metrics.evaluate`.
        distributed: inside an initialised ``torch.distributed`` process group, each process encodes its
            contiguous share of the queries and of the documents, and the embeddings are gathered in order: every
            process returns the metrics of the whole split (those of one process up to float rounding: a share is
            batched with other sentences, so padding differs).

    Returns:
        ``{metric: value}`` (means over the queries), plus per-query tensors when ``per_query``.
    """
    if len(queries) != len(documents):
        raise ValueError(f"queries and documents must be aligned: {len(queries)} queries, {len(documents)} documents")
    _metrics._parse(metrics)
    qm = query_model if query_model is not None else model
    qt = query_tokenizer if query_tokenizer is not None else tokenizer
    kw = dict(batch_size=batch_size, max_length=max_length, device=device, progress=progress)
    q = _encode_shared(qm, qt, queries, distributed, desc="queries", **kw)
    d = _encode_shared(model, tokenizer, documents, distributed, desc="documents", **kw)
    return _metrics.evaluate(q @ d.T, torch.arange(len(queries)), metrics, per_query=per_query)


def _encode_shared(model, tokenizer, texts, distributed: bool, **kw) -> torch.Tensor:
    """:func:`encode`, split over the processes of the default group when ``distributed`` (see
    :func:`evaluate_bitext`) and gathered in order."""
    import torch.distributed as dist  # noqa: PLC0415

    if not (distributed and texts and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return encode(model, tokenizer, texts, **kw)
    from ..train._dist import Dist, shard  # noqa: PLC0415

    group = Dist(dist.get_rank(), dist.get_world_size())
    share = shard(texts, group.rank, group.world)
    # Every process encodes as many texts (the first share's count, padded with a repeat): the same number of
    # forward calls everywhere, which a sharded (FSDP) model needs, and equal blocks to gather.
    size = -(-len(texts) // group.world)
    mine = encode(model, tokenizer, share + [texts[0]] * (size - len(share)), **kw)
    if dist.get_backend() == "nccl":  # NCCL gathers device tensors
        mine = mine.to(kw.get("device") or next(model.parameters()).device)
    blocks = group.gather_rows(mine).cpu().split(size)
    return torch.cat([b[:len(shard(texts, r, group.world))] for r, b in enumerate(blocks)])
