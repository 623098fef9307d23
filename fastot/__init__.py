"""fastot: batched log-domain Sinkhorn and code-switch token substitution as compiled kernels.

``import fastot`` does not fail because the compiled extension is missing: it warns once and the ops
run on the pure-PyTorch reference (``backend="torch"``), unless ``FASTOT_REQUIRE`` names the missing part
(``FASTOT_REQUIRE=cpp,triton``; ``make test`` sets it): then it raises ImportError saying why.
"""

from __future__ import annotations

import warnings

from . import _backend

try:
    from . import _C  # noqa: F401  (registers torch.ops.fastot.*)
except ImportError as exc:  # pragma: no cover - exercised by the fallback test in a subprocess
    _backend._set_extension_error(f"{type(exc).__name__}: {exc}")
    warnings.warn(
        f"fastot: the compiled extension fastot._C could not be loaded ({exc}); using the PyTorch reference. "
        "Reinstall with `make venv` (or `pip install --no-build-isolation -e .`) to build it.",
        RuntimeWarning,
        stacklevel=2,
    )
else:
    _backend._set_extension_error(None)

from . import triton as _triton  # noqa: E402,F401  (tells _backend which ops have Triton kernels)

_backend.enforce_required()  # FASTOT_REQUIRE: a missing part is an ImportError, not a warning
from ._packed import pack_tokens  # noqa: E402
from .codeswitch import CodeSwitcher, CodeSwitchOutput, Lexicon  # noqa: E402
from .collate import BitextCollator, CodeSwitchCollator  # noqa: E402
from .divergence import SinkhornDivergence, sinkhorn_divergence  # noqa: E402
from .losses import OTDistillationLoss, content_mask, ot_distillation_loss  # noqa: E402
from .sinkhorn import (  # noqa: E402
    SinkhornResult,
    geometric_eps_schedule,
    pairwise_cost,
    sinkhorn,
    sinkhorn_embeddings,
)

if _backend._EXT_ERROR is None:
    from . import _fakes  # noqa: E402,F401  (the compiled ops' fake implementations, registered once)

BackendUnavailable = _backend.BackendUnavailable
show_backends = _backend.show_backends
available_backends = _backend.available

__version__ = "0.1.0"
__all__ = [
    "BackendUnavailable",
    "BitextCollator",
    "CodeSwitchCollator",
    "CodeSwitchOutput",
    "CodeSwitcher",
    "Lexicon",
    "OTDistillationLoss",
    "SinkhornDivergence",
    "SinkhornResult",
    "available_backends",
    "content_mask",
    "geometric_eps_schedule",
    "ot_distillation_loss",
    "pack_tokens",
    "pairwise_cost",
    "show_backends",
    "sinkhorn",
    "sinkhorn_divergence",
    "sinkhorn_embeddings",
]
