"""Run by the two-process tests under ``torchrun`` (and in-process for world size 1): a training loop with tiny
BERTs without dropout, so world sizes can be compared weight for weight. Rank 0 writes the gradients of every
optimizer step to ``<output_dir>/grads-<step>.pt`` through a global optimizer hook (no change to the loops).

    python -m torch.distributed.run --standalone --nproc-per-node 2 python_tests/dist_worker.py distill JSON
"""

import json
import os
import sys

import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook


def tiny(kind: str, seed: int = 0, hidden: int = 32):
    from transformers import BertConfig, BertForSequenceClassification, BertModel  # noqa: PLC0415

    from fastot.train import load_tokenizer  # noqa: PLC0415

    cfg = BertConfig(vocab_size=load_tokenizer("tiny").vocab_size, hidden_size=hidden, num_hidden_layers=2,
                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=512, num_labels=1,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return BertModel(cfg, add_pooling_layer=False) if kind == "encoder" else BertForSequenceClassification(cfg)


def record_grads(out: str, names: dict):
    """Save the gradients before every optimizer step (rank 0; each process holds the reduced ones); returns the
    hook's handle (``.remove()`` it in a long-lived process)."""
    state = {"n": 0}

    def hook(opt, args, kwargs):
        state["n"] += 1
        if int(os.environ.get("RANK", "0")) == 0:
            os.makedirs(out, exist_ok=True)
            torch.save({names[id(p)]: p.grad.detach().cpu().clone() for g in opt.param_groups for p in g["params"]
                        if p.grad is not None and id(p) in names}, os.path.join(out, f"grads-{state['n']}.pt"))

    return register_optimizer_step_pre_hook(hook)


def run(kind: str, options: dict, grads_dir: str | None = None) -> dict:
    from fastot.train import distill, train_reranker  # noqa: PLC0415

    if kind == "sweep":  # the sweep's own models (each cell trains alone)
        from fastot.experiments import sweep  # noqa: PLC0415

        return sweep(None, None, **options)
    width = options.pop("student_width", 32)  # != 32: the loss gets a projection (trained, and sharded by FSDP)
    models = (tiny("encoder", 1), tiny("encoder", 2, width)) if kind == "distill" else (tiny("reranker", 0),)
    hook = record_grads(grads_dir, {id(p): n for n, p in models[-1].named_parameters()}) if grads_dir else None
    try:
        if kind == "distill":
            return distill(teacher_model=models[0], student_model=models[1], **options)
        return train_reranker(reranker=models[0], **options)
    finally:
        if hook is not None:
            hook.remove()


if __name__ == "__main__":
    kind, options = sys.argv[1], json.loads(sys.argv[2])
    grads = options.pop("grads_dir", None)
    res = run(kind, options, grads)
    if int(os.environ.get("RANK", "0")) == 0:
        print("RESULT " + json.dumps(res, default=str))
