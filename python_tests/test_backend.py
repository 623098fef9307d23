"""Backend choice: auto order, FASTOT_BACKEND, explicit requests, show_backends."""

import pytest
import torch

import fastot
from fastot import _backend


def test_show_backends_reports_torch_cpp_and_why_cuda_is_missing(capsys):
    table = fastot.show_backends()
    out = capsys.readouterr().out
    assert table["torch"] == {"sinkhorn": None, "codeswitch": None}
    if _backend._EXT_ERROR is None:
        assert table["cpp"] == {"sinkhorn": None, "codeswitch": None}
    if not torch.cuda.is_available():
        assert table["cuda"]["sinkhorn"] is not None and "cuda" in out
        assert "unavailable: " in out


def test_auto_prefers_cpp_on_cpu_and_falls_back_quietly(monkeypatch):
    dev = torch.device("cpu")
    expect = "cpp" if _backend._EXT_ERROR is None else "torch"
    assert _backend.resolve("sinkhorn", dev, "auto") == expect
    assert _backend.resolve("sinkhorn", dev, None) == expect
    monkeypatch.setattr(_backend, "_EXT_ERROR", "pretend it failed")
    assert _backend.resolve("sinkhorn", dev, "auto") == "torch"
    with pytest.raises(fastot.BackendUnavailable, match="pretend it failed"):
        _backend.resolve("sinkhorn", dev, "cpp")


def test_env_var_sets_default_and_explicit_argument_wins(monkeypatch):
    dev = torch.device("cpu")
    monkeypatch.setenv("FASTOT_BACKEND", "torch")
    assert _backend.resolve("codeswitch", dev, None) == "torch"
    assert _backend.resolve("codeswitch", dev, "auto") == "torch"
    r = fastot.sinkhorn(torch.rand(1, 2, 3), eps=0.1)
    assert r.backend == "torch"
    if _backend._EXT_ERROR is None:
        assert _backend.resolve("codeswitch", dev, "cpp") == "cpp"
    monkeypatch.setenv("FASTOT_BACKEND", "cuda")
    if not torch.cuda.is_available():
        with pytest.raises(fastot.BackendUnavailable, match="FASTOT_BACKEND='cuda'"):
            _backend.resolve("sinkhorn", dev, None)
    monkeypatch.setenv("FASTOT_BACKEND", "nonsense")
    with pytest.raises(fastot.BackendUnavailable, match="unknown backend"):
        _backend.resolve("sinkhorn", dev, None)


def test_triton_backend_availability(monkeypatch):
    """Both ops have Triton kernels: they run on CUDA tensors, or on CPU tensors under TRITON_INTERPRET=1 (set by
    conftest here); an op without one is reported as such."""
    if not _backend._HAS_TRITON:
        assert "not installed" in _backend.why_unavailable("triton", "sinkhorn", "cpu")
        return
    monkeypatch.setitem(_backend._TRITON_OPS, "codeswitch", False)
    assert "no Triton kernel" in _backend.why_unavailable("triton", "codeswitch", "cpu")
    monkeypatch.setitem(_backend._TRITON_OPS, "codeswitch", True)
    for op in _backend.OPS:
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        assert _backend.why_unavailable("triton", op, "cpu") is None
        assert _backend.resolve(op, torch.device("cpu"), "auto") != "triton"  # never chosen for CPU by auto
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        assert "TRITON_INTERPRET=1" in _backend.why_unavailable("triton", op, "cpu")
