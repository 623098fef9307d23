"""Formatting shared by the experiments' reports."""

from __future__ import annotations

from collections.abc import Sequence


def fmt_p(p: float) -> str:
    return f"{p:g}"


def stuck_warning(label: str, res: dict) -> str:
    """The one line printed for a reranker whose training ended on the prior (``train_reranker``'s verdict)."""
    return (f"WARNING: {label}: training ended on the prior (mean loss {res['tail_loss']:.3f} over the last "
            f"{res['tail_steps']} steps; always predicting the positive share gives {res['prior_loss']:.3f}): it "
            "learnt no ranking; its results are marked †")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    def cell(v):
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


