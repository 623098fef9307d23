"""The one place that chooses a backend.

``backend="auto" | "torch" | "cpp" | "cuda" | "triton"`` on every op; ``FASTOT_BACKEND`` sets the
default. ``auto`` picks per call from the tensor's device (CUDA: triton -> cuda -> torch, for every op until a
GPU run of ``bench/gpu.sh`` has passed; CPU: cpp -> torch) and silently skips
what is unavailable. A backend named explicitly, by argument or by
``FASTOT_BACKEND``, that cannot run the op on that device raises :class:`BackendUnavailable`.
"""

from __future__ import annotations

import importlib.util
import os
import shutil

import torch

BACKENDS = ("torch", "cpp", "cuda", "triton")
OPS = ("sinkhorn", "codeswitch")
# On CUDA tensors auto tries triton before cuda for every op: the Triton kernels' logic runs in CI (the
# interpreter), the CUDA kernels have only been compiled so far (no GPU run of bench/gpu.sh has passed yet). The
# first passing GPU run is to decide the order from measurements.
_AUTO_ORDER = {"cuda": ("triton", "cuda", "torch"), "cpu": ("cpp", "torch")}
# sinkhorn_embeddings (both cuda and triton build the cost inside the kernel): the same order.
AUTO_ORDER_FUSED = _AUTO_ORDER

# Set by fastot/__init__.py after trying to import the extension.
_EXT_ERROR: str | None = "fastot._C has not been imported"
# Triton implementations register themselves here: op name -> True.
_TRITON_OPS: dict[str, bool] = {}


class BackendUnavailable(RuntimeError):
    """An explicitly requested backend cannot run the op here; the message says why."""


_CPP_OP = {"sinkhorn": "fastot::sinkhorn_fwd", "codeswitch": "fastot::codeswitch"}
# (op, dispatch key) -> whether fastot._C has a kernel; filled once when the extension is imported so that
# choosing a backend is plain dict and environment look-ups (traceable by torch.compile).
_KERNELS: dict[tuple[str, str], bool] = {}
_HAS_TRITON = importlib.util.find_spec("triton") is not None


def _set_extension_error(err: str | None) -> None:
    global _EXT_ERROR
    _EXT_ERROR = err
    _KERNELS.clear()
    if err is None:
        for op, name in _CPP_OP.items():
            for key in ("CPU", "CUDA"):
                try:
                    _KERNELS[(op, key)] = torch._C._dispatch_has_kernel_for_dispatch_key(name, key)
                except RuntimeError:
                    _KERNELS[(op, key)] = False


def register_triton_op(op: str) -> None:
    _TRITON_OPS[op] = True


def _has_kernel(op: str, key: str) -> bool:
    return _KERNELS.get((op, key), False)


def _triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def why_unavailable(backend: str, op: str, device_type: str) -> str | None:
    """None if ``backend`` can run ``op`` on tensors of ``device_type``; otherwise the reason."""
    if backend not in BACKENDS:
        return f"unknown backend {backend!r}; expected one of {('auto',) + BACKENDS}"
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}")
    if backend == "torch":
        return None
    if backend == "cpp":
        if device_type != "cpu":
            return f"the cpp backend runs on CPU tensors, got a {device_type} tensor"
        if _EXT_ERROR is not None:
            return f"the compiled extension is not loaded ({_EXT_ERROR})"
        return None if _has_kernel(op, "CPU") else f"fastot._C has no CPU kernel for {op}"
    if backend == "cuda":
        if _EXT_ERROR is not None:
            return f"the compiled extension is not loaded ({_EXT_ERROR})"
        if torch.version.cuda is None:
            return "torch is a CPU-only build, so fastot._C was built without CUDA kernels"
        if not _has_kernel(op, "CUDA"):
            return "fastot._C was built without CUDA kernels (nvcc was not found at build time)"
        if not torch.cuda.is_available():
            return "no CUDA device is visible"
        if device_type != "cuda":
            return f"the cuda backend runs on CUDA tensors, got a {device_type} tensor"
        return None
    # triton
    if not _HAS_TRITON:
        return "triton is not installed"
    if not _TRITON_OPS.get(op, False):
        return f"no Triton kernel for {op} yet"
    if device_type == "cuda":
        return None
    if device_type == "cpu" and _triton_interpreting():
        return None
    return f"triton runs on CUDA tensors (or CPU tensors with TRITON_INTERPRET=1), got a {device_type} tensor"


def requested(backend: str | None) -> tuple[str, str]:
    """(the backend asked for, where it came from: "backend=" or "FASTOT_BACKEND="). The argument wins unless it
    is None or "auto"; then a FASTOT_BACKEND other than "auto" does."""
    if backend is None or backend == "auto":
        env = os.environ.get("FASTOT_BACKEND", "auto").strip().lower() or "auto"
        if backend is None or env != "auto":
            return env, "FASTOT_BACKEND="
    return backend, "backend="


def resolve(op: str, device: torch.device, backend: str | None, auto_order: dict | None = None) -> str:
    """The backend that will run ``op`` for tensors on ``device`` (``auto_order`` replaces the auto preference)."""
    backend, source = requested(backend)
    if backend == "auto":
        for cand in (auto_order or _AUTO_ORDER).get(device.type, ("torch",)):
            if why_unavailable(cand, op, device.type) is None:
                return cand
        return "torch"
    reason = why_unavailable(backend, op, device.type)
    if reason is not None:
        raise BackendUnavailable(f"{op}: {source}{backend!r} is unavailable: {reason}")
    return backend


REQUIRE_PARTS = ("cpp", "cuda", "triton")


def enforce_required() -> None:
    """``FASTOT_REQUIRE=cpp,triton`` (any of cpp, cuda, triton): raise ImportError from ``import fastot`` when a
    named part is missing, instead of the warning and the silent fallback to the reference. cpp: the extension
    loads and has a CPU kernel for every op; cuda: the same with CUDA kernels and a visible device; triton:
    Triton is installed and fastot's Triton kernels registered for every op (where they can run is decided
    per call: CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``). ``make test`` sets
    ``cpp,triton``, so a missing or broken extension fails the suite."""
    raw = os.environ.get("FASTOT_REQUIRE", "")
    parts = [p.strip().lower() for p in raw.split(",") if p.strip()]
    for part in parts:
        if part not in REQUIRE_PARTS:
            raise ImportError(f"fastot: FASTOT_REQUIRE={raw!r} names {part!r}; expected a comma list of {REQUIRE_PARTS}")
        device = "cpu" if part == "cpp" else "cuda"  # triton on "cuda": installed and registered, any device
        for op in OPS:
            reason = why_unavailable(part, op, device)
            if reason is not None:
                raise ImportError(f"fastot: FASTOT_REQUIRE={raw!r} but the {part} backend cannot run {op} on {device} "
                                  f"tensors: {reason}")


def show_backends(file=None) -> dict[str, dict[str, str | None]]:
    """Print which backend can run which op here, and why not; returns {backend: {op: reason or None}}.

    A backend counts as available for an op if it can run it on some device of this machine
    (CPU, the visible CUDA device, or CPU under ``TRITON_INTERPRET=1``).
    """
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    table: dict[str, dict[str, str | None]] = {}
    for be in BACKENDS:
        table[be] = {}
        for op in OPS:
            reasons = [why_unavailable(be, op, d) for d in devices]
            ok = [d for d, r in zip(devices, reasons) if r is None]
            table[be][op] = None if ok else reasons[-1]
    lines = [f"fastot backends (torch {torch.__version__}, CUDA device: {torch.cuda.is_available()}, nvcc: {shutil.which('nvcc') is not None})"]
    for be in BACKENDS:
        for op in OPS:
            r = table[be][op]
            lines.append(f"  {be:<7} {op:<11} {'available' if r is None else 'unavailable: ' + r}")
    print("\n".join(lines), file=file)
    return table


def available(op: str, device_type: str = "cpu") -> list[str]:
    """Backends that can run ``op`` on tensors of ``device_type``."""
    return [be for be in BACKENDS if why_unavailable(be, op, device_type) is None]


