"""OT distillation (OPTICAL) as a drop-in loss: ``<P*, C>`` between student and teacher token embeddings.

For each sentence pair, the cost C [N, M] is computed from the student's N and the teacher's M token
embeddings, P* is the entropic OT plan between uniform weights on the real tokens of each side, and the loss
is ``<P*, C>`` with P* held constant (envelope). Everything goes through :func:`fastot.sinkhorn_embeddings`,
whose fused backends (cpp on CPU, triton on CUDA) build the cost inside the kernels, forward and backward:
no [B, N, M] tensor lives between the forward and the backward.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable

import torch
from torch import nn

from .divergence import sinkhorn_divergence
from .sinkhorn import COSTS, METHODS, sinkhorn_embeddings

OBJECTIVES = ("transport_cost", "sinkhorn")
REDUCTIONS = ("mean", "sum", "none")


_SPECIAL_CACHE: dict[tuple, torch.Tensor] = {}


def _special_tensor(special_ids, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The special ids as a tensor on ``device``, built (and copied host-to-device) once per id set, dtype and
    device rather than once per training step. A tensor argument on the right device is used as is."""
    if isinstance(special_ids, torch.Tensor) and special_ids.device == device:
        return special_ids.to(dtype)
    ids = tuple(sorted(set(int(i) for i in (special_ids.tolist() if isinstance(special_ids, torch.Tensor)
                                            else special_ids))))
    key = (ids, dtype, str(device))
    t = _SPECIAL_CACHE.get(key)
    if t is None:
        if len(_SPECIAL_CACHE) > 64:  # a handful of tokenizers per process; never grows without bound
            _SPECIAL_CACHE.clear()
        t = _SPECIAL_CACHE[key] = torch.tensor(ids, dtype=dtype, device=device)
    return t


def content_mask(input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                 special_ids: Iterable[int]) -> torch.Tensor:
    """[B, L] bool: True where a token is real (attention mask set) and not one of ``special_ids``.

    With a Hugging Face tokenizer, ``special_ids=tokenizer.all_special_ids`` drops [CLS], [SEP], [PAD], ...;
    [UNK] is in that list too, pass a narrower list to keep it. The ids go to the device once per id set (cached),
    not once per call; a tensor already on the device is used as is.
    """
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        raise ValueError(f"content_mask: input_ids must be a [B, L] tensor, got {getattr(input_ids, 'shape', input_ids)!r}")
    keep = torch.ones_like(input_ids, dtype=torch.bool)
    if attention_mask is not None:
        if tuple(attention_mask.shape) != tuple(input_ids.shape):
            raise ValueError(f"content_mask: attention_mask has shape {list(attention_mask.shape)}, "
                             f"input_ids {list(input_ids.shape)}")
        keep &= attention_mask.bool()
    special = _special_tensor(special_ids, input_ids.dtype, input_ids.device)
    if special.numel():
        keep &= ~torch.isin(input_ids, special)
    return keep


def _check_hidden(name: str, h, mask_name: str, mask, packed: bool = False) -> None:
    want = "[T, d] (packed, with cu_seqlens)" if packed else "[B, L, d]"
    if not isinstance(h, torch.Tensor) or h.dim() != (2 if packed else 3) or not h.is_floating_point():
        raise ValueError(f"OTDistillationLoss: {name} must be a floating-point {want} tensor, got "
                         f"{type(h).__name__ if not isinstance(h, torch.Tensor) else f'{h.dtype} {list(h.shape)}'}")
    if mask is not None:
        lead = tuple(h.shape[:-1])
        if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != lead:
            raise ValueError(f"OTDistillationLoss: {mask_name} must be a {'[T]' if packed else '[B, L]'} tensor "
                             f"matching {name} {list(lead)}, got "
                             f"{list(mask.shape) if isinstance(mask, torch.Tensor) else mask!r}")


def _objective(objective: str | None, debias) -> str:
    """The objective that runs: None -> "sinkhorn" with debias, else "transport_cost"."""
    if not isinstance(debias, bool):
        raise ValueError(f"OTDistillationLoss: debias must be True or False, got {debias!r}")
    if objective is None:
        return "sinkhorn" if debias else "transport_cost"
    if debias and objective != "sinkhorn":
        raise ValueError(f"OTDistillationLoss: debias=True is the Sinkhorn divergence of the entropic values "
                         f"(objective='sinkhorn'), got objective={objective!r}")
    return objective


def _check_options(cost: str, reduction: str, objective: str, eps, max_iter) -> None:
    if not isinstance(eps, numbers.Real) or isinstance(eps, bool) or not eps > 0:
        raise ValueError(f"OTDistillationLoss: eps must be a positive number, got {eps!r}")
    if not isinstance(max_iter, numbers.Integral) or isinstance(max_iter, bool) or max_iter < 1:
        raise ValueError(f"OTDistillationLoss: max_iter must be an integer >= 1, got {max_iter!r}")
    if cost not in COSTS:
        raise ValueError(f"OTDistillationLoss: cost must be one of {COSTS}, got {cost!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"OTDistillationLoss: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if objective not in OBJECTIVES:
        raise ValueError(f"OTDistillationLoss: objective must be one of {OBJECTIVES}, got {objective!r}")


def ot_distillation_loss(
    student_hidden: torch.Tensor,
    student_mask: torch.Tensor | None,
    teacher_hidden: torch.Tensor,
    teacher_mask: torch.Tensor | None,
    *,
    eps: float = 0.05,
    max_iter: int = 50,
    cost: str = "cosine",
    reduction: str = "mean",
    objective: str | None = None,
    tol: float | None = None,
    grad: str = "envelope",
    student_weights: torch.Tensor | None = None,
    teacher_weights: torch.Tensor | None = None,
    projection: nn.Module | None = None,
    backend: str | None = None,
    method: str = "auto",
    debias: bool = False,
    cu_seqlens_student: torch.Tensor | None = None,
    cu_seqlens_teacher: torch.Tensor | None = None,
) -> torch.Tensor:
    """The OT distillation loss as a function; see :class:`OTDistillationLoss` for the arguments.

    Returns a scalar (``reduction="mean"`` or ``"sum"``) or a [B] tensor (``"none"``).
    """
    packed = cu_seqlens_student is not None or cu_seqlens_teacher is not None
    if packed and (cu_seqlens_student is None or cu_seqlens_teacher is None):
        raise ValueError("OTDistillationLoss: packed input needs both cu_seqlens_student and cu_seqlens_teacher")
    _check_hidden("student_hidden", student_hidden, "student_mask", student_mask, packed)
    _check_hidden("teacher_hidden", teacher_hidden, "teacher_mask", teacher_mask, packed)
    if packed:  # checked here, so that the errors name the loss's arguments
        from ._packed import check_cu  # noqa: PLC0415 - packed input only

        n_s = check_cu(cu_seqlens_student, "cu_seqlens_student", student_hidden.shape[0], student_hidden,
                       "OTDistillationLoss")[0].numel()
        n_t = check_cu(cu_seqlens_teacher, "cu_seqlens_teacher", teacher_hidden.shape[0], teacher_hidden,
                       "OTDistillationLoss")[0].numel()
        if n_s != n_t:
            raise ValueError(f"OTDistillationLoss: cu_seqlens_student has {n_s - 1} pairs but cu_seqlens_teacher "
                             f"has {n_t - 1}")
        for name, w, h in (("student_weights", student_weights, student_hidden),
                           ("teacher_weights", teacher_weights, teacher_hidden)):
            if w is not None and (not isinstance(w, torch.Tensor) or tuple(w.shape) != (h.shape[0],)):
                raise ValueError(f"OTDistillationLoss: {name} must be a [{h.shape[0]}] tensor (packed), got "
                                 f"{list(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__}")
    if not packed and student_hidden.shape[0] != teacher_hidden.shape[0]:
        raise ValueError(f"OTDistillationLoss: student_hidden has {student_hidden.shape[0]} pairs but "
                         f"teacher_hidden has {teacher_hidden.shape[0]}")
    objective = _objective(objective, debias)
    _check_options(cost, reduction, objective, eps, max_iter)
    if debias and grad != "envelope":
        raise ValueError(f"OTDistillationLoss: debias=True supports grad='envelope' only, got {grad!r}")
    x = student_hidden
    if projection is not None:
        # under autocast the hidden states may be bf16/fp16 while the projection's weights are fp32
        w = next((p for p in projection.parameters() if p.is_floating_point()), None)
        x = projection(x.to(w.dtype) if w is not None else x)
    if x.shape[-1] != teacher_hidden.shape[-1]:
        hint = "" if projection is not None else "; pass projection= (e.g. nn.Linear(d_student, d_teacher))"
        raise ValueError(f"OTDistillationLoss: student dimension {x.shape[-1]} != teacher dimension "
                         f"{teacher_hidden.shape[-1]}{hint}")
    y = teacher_hidden.detach()  # the teacher is frozen: no gradient is ever computed for it
    if y.dtype != x.dtype:  # e.g. an fp32 teacher with a bf16 autocast student: solve in the wider type
        wide = torch.promote_types(x.dtype, y.dtype)
        x, y = x.to(wide), y.to(wide)
    cu = dict(cu_seqlens_x=cu_seqlens_student, cu_seqlens_y=cu_seqlens_teacher)
    if debias:
        div = sinkhorn_divergence(x, y, student_mask, teacher_mask, a=student_weights, b=teacher_weights, cost=cost,
                                  eps=eps, max_iter=max_iter, tol=tol, backend=backend, method=method, **cu)
        per_pair = div.value
    else:
        res = sinkhorn_embeddings(x, y, student_mask, teacher_mask, a=student_weights, b=teacher_weights, cost=cost,
                                  eps=eps, max_iter=max_iter, tol=tol, grad=grad, backend=backend, method=method, **cu)
        per_pair = res.transport_cost if objective == "transport_cost" else res.value
    if reduction == "none":
        return per_pair
    if reduction == "sum":
        return per_pair.sum()
    # mean over the pairs that have tokens on both sides (a pair with an empty side carries no loss)
    has_mass = ((_side_mass(student_mask, student_weights, x, cu_seqlens_student) > 0)
                & (_side_mass(teacher_mask, teacher_weights, y, cu_seqlens_teacher) > 0))
    return per_pair.sum() / has_mass.sum().clamp_min(1).to(per_pair.dtype)


def _side_mass(mask, weights, h, cu) -> torch.Tensor:
    """[B] total weight sinkhorn_embeddings gives each pair's side (only whether it is positive is read)."""
    w = torch.ones(h.shape[:-1], device=h.device) if weights is None else weights.detach()
    w = w if mask is None else w * (mask != 0)
    if cu is None:
        return w.sum(1)
    seg = torch.repeat_interleave(torch.arange(cu.numel() - 1, device=h.device), cu[1:] - cu[:-1],
                                  output_size=h.shape[0])
    return torch.zeros(cu.numel() - 1, dtype=w.dtype, device=h.device).index_add(0, seg, w.to(w.dtype))


class OTDistillationLoss(nn.Module):
    """OPTICAL's token-alignment loss: ``loss = criterion(student_hidden, student_mask, teacher_hidden, teacher_mask)``.

    Args:
        eps: entropic regularisation, in units of the cost (cosine distance lies in [0, 2]). Default 0.05.
        max_iter: Sinkhorn iterations per pair (default 50; fixed count unless ``tol`` is set).
        cost: "cosine" (default, 1 - cos), "sqeuclidean" or "dot".
        reduction: "mean" (over pairs with tokens on both sides), "sum" or "none" ([B] per-pair losses).
        objective: "transport_cost" (the default without debias: <P*, C>, the OPTICAL loss) or "sinkhorn" (the
            entropic OT value, <P*, C> minus eps times the plan's entropy term; the default with debias).
        debias: False (default) or True: the loss is the debiased Sinkhorn divergence
            S = OT(student, teacher) - OT(student, student) / 2 - OT(teacher, teacher) / 2 of the entropic values
            (:func:`fastot.sinkhorn_divergence`; nonnegative, 0 when the two token clouds are equal). Three solves
            per pair instead of one (the self-problems by symmetric updates, which converge in a few iterations).
        tol: optional per-pair early stop on the marginal error (no host sync).
        grad: "envelope" (default: P* is a constant, d loss / dC = P*) or "unrolled" (autograd through every
            iteration; torch backend, materialised cost: for experiments only).
        projection: optional module mapping the student dimension to the teacher's (its parameters are part
            of this module, so ``criterion.parameters()`` belongs in the optimizer).
        backend: Sinkhorn backend; default from ``FASTOT_BACKEND``, else the fused one for the device.
        method: Sinkhorn iteration scheme, "auto" (default), "log" or "scaling"; see :func:`fastot.sinkhorn`.

    Call:
        student_hidden [B, N, d_s], student_mask [B, N] (bool/0-1, True = token that carries mass, or None),
        teacher_hidden [B, M, d_t], teacher_mask [B, M]; optional ``student_weights`` [B, N] /
        ``teacher_weights`` [B, M] replace the uniform weights (they are multiplied by the masks).
        Build masks that drop special tokens with :func:`content_mask`.
        Packed (varlen) input: ``student_hidden`` [Ts, d_s] and ``teacher_hidden`` [Tt, d_t] hold the pairs' tokens
        back to back, with ``cu_seqlens_student`` / ``cu_seqlens_teacher`` [B + 1] (flash-attention's layout; see
        :func:`fastot.sinkhorn_embeddings`); masks and weights are then [Ts] / [Tt].

    The teacher side is detached. Half-precision hidden states are solved in float32.
    """

    def __init__(self, eps: float = 0.05, max_iter: int = 50, cost: str = "cosine", reduction: str = "mean",
                 objective: str | None = None, tol: float | None = None, grad: str = "envelope",
                 projection: nn.Module | None = None, backend: str | None = None, method: str = "auto",
                 debias: bool = False):
        super().__init__()
        objective = _objective(objective, debias)
        _check_options(cost, reduction, objective, eps, max_iter)
        if debias and grad != "envelope":
            raise ValueError(f"OTDistillationLoss: debias=True supports grad='envelope' only, got {grad!r}")
        self.debias = debias
        self.eps, self.max_iter, self.cost, self.reduction = float(eps), max_iter, cost, reduction
        self.objective, self.tol, self.grad, self.backend = objective, tol, grad, backend
        if method not in METHODS:
            raise ValueError(f"OTDistillationLoss: method must be one of {METHODS}, got {method!r}")
        self.method = method
        self.projection = projection

    def forward(self, student_hidden, student_mask, teacher_hidden, teacher_mask, *, student_weights=None,
                teacher_weights=None, cu_seqlens_student=None, cu_seqlens_teacher=None) -> torch.Tensor:
        return ot_distillation_loss(
            student_hidden, student_mask, teacher_hidden, teacher_mask, eps=self.eps, max_iter=self.max_iter,
            cost=self.cost, reduction=self.reduction, objective=self.objective, tol=self.tol, grad=self.grad,
            student_weights=student_weights, teacher_weights=teacher_weights, projection=self.projection,
            backend=self.backend, method=self.method, debias=self.debias, cu_seqlens_student=cu_seqlens_student,
            cu_seqlens_teacher=cu_seqlens_teacher)

    def extra_repr(self) -> str:
        return (f"eps={self.eps}, max_iter={self.max_iter}, cost={self.cost!r}, reduction={self.reduction!r}, "
                f"objective={self.objective!r}" + (", debias=True" if self.debias else ""))
