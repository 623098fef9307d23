"""``fastot distill`` against the same OT distillation through sentence-transformers' trainer, side by side.

    python -m bench.st_distill                       # MiniLM on MAFAND en-swa, 60 steps of 32 pairs, dropout on
    python -m bench.st_distill --no-dropout          # both runs deterministic: the curves must coincide
    python -m bench.st_distill --steps 4 --eval-pairs 50 --model tiny   # smoke test

Both start from the pretrained MiniLM (teacher and student), on the same training pairs in the same
length-grouped batches (``LengthGroupedBatchSampler``), with AdamW at lr 5e-5, weight decay 0.01, 10 warm-up
steps then linear decay, clipping at 1.0, seed 0, max_length 128, eps 0.05, 50 Sinkhorn iterations, fp32 on the
CPU. What can differ: dropout's random masks (the two loops draw them from different generator states), and
float rounding. Reported: the loss of every step from both, their per-step and 10-step-mean differences, time
per step, and the retrieval metrics after training from ``fastot.ir.evaluate_bitext`` and from
sentence-transformers' ``InformationRetrievalEvaluator`` (``bitext_evaluator``) on the dev pairs, each model
through each. CSV of the curves to bench/results/.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import shutil
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from bench.sinkhorn_cpu import cpu_name, git_sha  # noqa: E402
from fastot.experiments.domains import data_root  # noqa: E402
from fastot.ir.retrieval import evaluate_bitext  # noqa: E402
from fastot.train import DistillConfig, distill, load_encoder, load_tokenizer  # noqa: E402
from fastot.train.distill import read_pairs  # noqa: E402
from fastot.train.models import MINILM, minilm_path  # noqa: E402

METRICS = ("mrr@10", "recall@1", "recall@10", "ndcg@10")


def _no_dropout(model):
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    return model


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None)
    ap.add_argument("--lang", default="swa")
    ap.add_argument("--model", default=MINILM, help="minilm (default) or tiny")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--train-pairs", type=int, default=4000, help="the first n training pairs")
    ap.add_argument("--eval-pairs", type=int, default=500)
    ap.add_argument("--no-dropout", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    import datasets  # noqa: PLC0415
    from sentence_transformers import (  # noqa: PLC0415
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer  # noqa: PLC0415

    from fastot.integrations.sentence_transformers import (  # noqa: PLC0415
        LengthGroupedBatchSampler,
        OTDistillLoss,
        bitext_evaluator,
    )

    bitext = os.path.join(data_root(args.data), "mafand", f"en-{args.lang}")
    en, tgt = read_pairs(bitext, args.lang, "train", args.train_pairs)
    dev_en, dev_tgt = read_pairs(bitext, args.lang, "dev", args.eval_pairs)
    work = tempfile.mkdtemp(prefix="st-distill-")
    if args.model == MINILM:
        folder = minilm_path()
    else:  # save the random model so both libraries load the same weights
        folder = os.path.join(work, "init")
        load_encoder(args.model, seed=0).save_pretrained(folder)
        load_tokenizer(args.model).save_pretrained(folder)
    common = dict(lr=5e-5, weight_decay=0.01, warmup=10, clip=1.0)

    # --- fastot distill ------------------------------------------------------------------------------------
    tok = load_tokenizer(folder)
    teacher, student = load_encoder(folder), load_encoder(folder)
    if args.no_dropout:
        _no_dropout(student)
    cfg = DistillConfig(bitext=bitext, lang=args.lang, output_dir=os.path.join(work, "fastot"), eval_split=None,
                        max_train_pairs=args.train_pairs, max_steps=args.steps, batch_size=args.batch_size,
                        lr=common["lr"], weight_decay=common["weight_decay"], warmup_steps=common["warmup"],
                        max_grad_norm=common["clip"], seed=0, max_length=128, save_every=0, device="cpu",
                        progress=True)
    t0 = time.perf_counter()
    distill(cfg, teacher_model=teacher, student_model=student, teacher_tokenizer=tok, student_tokenizer=tok)
    fastot_s = (time.perf_counter() - t0) / args.steps
    fastot_loss = [r["loss"] for r in map(json.loads, open(os.path.join(cfg.output_dir, "log.jsonl"))) if "loss" in r]

    # --- sentence-transformers --------------------------------------------------------------------------------
    def st_model():
        t = Transformer(folder, max_seq_length=128)
        return SentenceTransformer(modules=[t, Pooling(t.get_embedding_dimension(), "mean")], device="cpu")

    st_teacher, st_student = st_model(), st_model()
    if args.no_dropout:
        _no_dropout(st_student)
    targs = SentenceTransformerTrainingArguments(
        output_dir=os.path.join(work, "st"), max_steps=args.steps, per_device_train_batch_size=args.batch_size,
        learning_rate=common["lr"], weight_decay=common["weight_decay"], warmup_steps=common["warmup"],
        max_grad_norm=common["clip"], seed=0, logging_steps=1, report_to=[], save_strategy="no",
        lr_scheduler_type="linear", optim="adamw_torch", use_cpu=True, batch_sampler=LengthGroupedBatchSampler)
    trainer = SentenceTransformerTrainer(model=st_student, args=targs, loss=OTDistillLoss(st_student, st_teacher),
                                         train_dataset=datasets.Dataset.from_dict({"en": en, "tgt": tgt}))
    t0 = time.perf_counter()
    trainer.train()
    st_s = (time.perf_counter() - t0) / args.steps
    st_loss = [r["loss"] for r in trainer.state.log_history if "loss" in r]

    # --- the curves -------------------------------------------------------------------------------------------
    diff = [abs(a - b) for a, b in zip(fastot_loss, st_loss)]
    w = 10
    means = [(statistics.fmean(fastot_loss[i:i + w]), statistics.fmean(st_loss[i:i + w]))
             for i in range(0, len(diff) - w + 1, w)]
    print(f"\n{'step':>5} {'fastot':>8} {'st':>8} {'|diff|':>8}")
    for i, (a, b) in enumerate(zip(fastot_loss, st_loss), 1):
        if i <= 5 or i % 10 == 0:
            print(f"{i:5d} {a:8.4f} {b:8.4f} {abs(a - b):8.4f}")
    print(f"per-step |diff|: median {statistics.median(diff):.4f}, max {max(diff):.4f}; "
          f"10-step means: {', '.join(f'{a:.4f}/{b:.4f}' for a, b in means)}")
    print(f"time per step: fastot {fastot_s:.2f} s, sentence-transformers {st_s:.2f} s "
          f"(ratio {st_s / fastot_s:.2f})")

    # --- retrieval after training, each model through each evaluator -----------------------------------------
    fastot_student = SentenceTransformer(modules=[Transformer(os.path.join(cfg.output_dir, "student"),
                                                              max_seq_length=128),
                                                  Pooling(st_teacher.get_embedding_dimension(), "mean")], device="cpu")
    ev = bitext_evaluator(dev_en, dev_tgt, name="dev")
    rows = []
    for name, m in (("fastot distill", fastot_student), ("sentence-transformers", st_student)):
        ours = evaluate_bitext(m[0].auto_model, m.tokenizer, dev_en, dev_tgt, max_length=128, metrics=METRICS)
        theirs = ev(m)
        rows.append((name, ours, {k: theirs[f"dev_cosine_{k}"] for k in METRICS}))
        print(f"{name:24s} fastot.ir: " + ", ".join(f"{k} {ours[k]:.4f}" for k in METRICS)
              + " | ST evaluator: " + ", ".join(f"{k} {rows[-1][2][k]:.4f}" for k in METRICS))

    stamp = datetime.date.today().isoformat()
    tag = "st-distill-nodropout" if args.no_dropout else "st-distill"
    out = args.out or os.path.join(os.path.dirname(__file__), "results", f"vm-{stamp}-{tag}.csv")
    with open(out, "w", newline="") as fh:
        wr = csv.writer(fh)
        wr.writerow(["step", "fastot_loss", "st_loss", "abs_diff", "model", "dropout", "batch_size", "cpu", "git",
                     "date"])
        for i, (a, b) in enumerate(zip(fastot_loss, st_loss), 1):
            wr.writerow([i, a, b, abs(a - b), args.model, not args.no_dropout, args.batch_size, cpu_name(),
                         git_sha(), stamp])
        for name, ours, theirs in rows:
            wr.writerow([f"eval {name}", json.dumps(ours), json.dumps(theirs), "", args.model, not args.no_dropout,
                         args.batch_size, cpu_name(), git_sha(), stamp])
    print(f"wrote {out}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
