"""The build: CUDA kernel sources compile for sm_80 and sm_90a with the machine's nvcc (no GPU needed),
and `import fastot` falls back to the reference when the extension is missing."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import fastot

ROOT = Path(__file__).resolve().parents[1]
KERNELS = sorted((ROOT / "csrc" / "cuda").glob("*_kernel.cu"))
NVCC = shutil.which("nvcc") or (shutil.which("nvcc", path="/usr/local/cuda/bin") if os.path.isdir("/usr/local/cuda/bin") else None)


def test_kernel_sources_exist_and_are_torch_free():
    assert {p.name for p in KERNELS} >= {"sinkhorn_kernel.cu", "sinkhorn_embeddings_kernel.cu", "codeswitch_kernel.cu"}
    cuda = ROOT / "csrc" / "cuda"
    headers = sorted(cuda.glob("*_kernel.h")) + sorted(cuda.glob("*.cuh")) + sorted((ROOT / "csrc" / "common").glob("*.h"))
    for p in list(KERNELS) + headers:
        text = p.read_text()
        for banned in ("<torch/", "<ATen/", "<c10/"):
            assert banned not in text, f"{p.name} includes {banned}: kernels must stay free of torch headers"


@pytest.mark.skipif(NVCC is None, reason="nvcc not found")
@pytest.mark.parametrize("arch", ["sm_80", "sm_90a"])
@pytest.mark.parametrize("src", KERNELS, ids=[p.stem for p in KERNELS])
def test_cuda_kernels_compile(tmp_path, arch, src):
    cmd = [NVCC, "-std=c++20", f"-arch={arch}", "-I", str(ROOT / "csrc"), "-Werror", "all-warnings", "-c", str(src),
           "-o", str(tmp_path / f"{src.stem}.o")]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    assert (tmp_path / f"{src.stem}.o").stat().st_size > 0


GLUE = sorted(p for p in (ROOT / "csrc" / "cuda").glob("*.cu") if not p.stem.endswith("_kernel"))


@pytest.mark.skipif(NVCC is None, reason="nvcc not found")
@pytest.mark.parametrize("arch", ["sm_80", "sm_90a"])
@pytest.mark.parametrize("src", GLUE, ids=[p.stem for p in GLUE])
def test_cuda_glue_compiles_against_torch_headers(tmp_path, src, arch):
    """The torch glue needs a CUDA build of torch to link, but it compiles against the CPU wheel's headers
    once the one header that only CUDA builds generate is supplied; this catches API misuse without a GPU."""
    import sysconfig

    from torch.utils import cpp_extension

    shim = tmp_path / "shim" / "c10" / "cuda" / "impl"
    shim.mkdir(parents=True)
    (shim / "cuda_cmake_macros.h").write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
    inc = [f"-I{p}" for p in cpp_extension.include_paths()] + [f"-I{tmp_path / 'shim'}",
                                                               f"-I{sysconfig.get_paths()['include']}"]
    cmd = [NVCC, "-std=c++20", f"-arch={arch}", "-I", str(ROOT / "csrc"), *inc, "-c", str(src),
           "-o", str(tmp_path / f"{src.stem}.o")]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-4000:]


def test_import_without_extension_warns_once_and_falls_back():
    code = r"""
import sys, warnings, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "fastot._C":
            raise ImportError("blocked for the test")
sys.meta_path.insert(0, Block())
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    import fastot
    import torch
msgs = [str(x.message) for x in w if "fastot._C" in str(x.message)]
assert len(msgs) == 1, msgs
r = fastot.sinkhorn(torch.rand(2, 3, 4), eps=0.1)
assert r.backend == "torch"
try:
    fastot.sinkhorn(torch.rand(2, 3, 4), eps=0.1, backend="cpp")
except fastot.BackendUnavailable as e:
    assert "extension is not loaded" in str(e)
else:
    raise SystemExit("cpp should be unavailable")
print("ok")
"""
    env = {k: v for k, v in os.environ.items() if k != "FASTOT_REQUIRE"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-3000:]
    # With FASTOT_REQUIRE naming it (as `make test` does), the same missing extension is an ImportError.
    for require, match in (("cpp,triton", "FASTOT_REQUIRE='cpp,triton' but the cpp backend cannot run sinkhorn"),
                           ("cpp", "extension is not loaded (ImportError: blocked for the test)")):
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                             env={**env, "FASTOT_REQUIRE": require})
        assert res.returncode != 0 and "ImportError" in res.stderr and match in res.stderr, res.stderr[-3000:]


@pytest.mark.parametrize("require,match", [("cuda", "the cuda backend cannot run sinkhorn on cuda tensors"),
                                           ("cpp,gpu", "names 'gpu'")])
def test_fastot_require_names_what_is_missing(require, match):
    """Requiring the cuda kernels on a machine without them (or without a device) fails; so does an unknown part.
    Triton missing: the blocked-import test above does the same for the extension."""
    if require == "cuda" and "cuda" in fastot.available_backends("sinkhorn", "cuda"):
        pytest.skip("the cuda backend is available here")
    env = {**os.environ, "FASTOT_REQUIRE": require}
    res = subprocess.run([sys.executable, "-c", "import fastot"], capture_output=True, text=True, timeout=300,
                         env=env)
    assert res.returncode != 0 and match in res.stderr, res.stderr[-3000:]


def test_fastot_require_triton_fails_without_triton():
    code = r"""
import sys
sys.modules["triton"] = None  # as if not installed: find_spec says None, import raises
import fastot
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "FASTOT_REQUIRE": "cpp,triton"})
    assert res.returncode != 0 and "the triton backend cannot run" in res.stderr, res.stderr[-3000:]


def test_extension_loaded_alone_finds_its_fakes():
    """torch.ops.load_library on fastot._C without `import fastot`: the library names fastot._fakes, so a fake
    tensor call says which module to import instead of failing blindly, and importing it is enough."""
    if "cpp" not in fastot.available_backends("sinkhorn"):
        pytest.skip("the compiled extension is not loaded")
    code = r"""
import sys, torch
torch.ops.load_library(sys.argv[1])
assert "fastot" not in sys.modules
from torch._subclasses.fake_tensor import FakeTensorMode
def call():
    with FakeTensorMode():
        return torch.ops.fastot.sinkhorn_fwd(torch.empty(2, 3, 4), torch.empty(2, 3), torch.empty(2, 4), 0.1, 5,
                                             None, None, None)
import traceback
try:
    call()
except Exception:
    assert "import the 'fastot._fakes' Python module" in traceback.format_exc()
else:
    raise SystemExit("expected the missing-fake error")
import fastot._fakes
f, g, n, err = call()
assert f.shape == (2, 3) and g.shape == (2, 4) and n.dtype == torch.int32
print("ok")
"""
    so = fastot._C.__file__
    res = subprocess.run([sys.executable, "-c", code, so], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-3000:]
