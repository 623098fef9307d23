"""Triton kernels: ``sinkhorn.py`` and ``codeswitch.py``.

Importing this package does not import Triton: it only tells ``fastot._backend`` which ops have a Triton
implementation. The kernel modules are imported when the triton backend is first chosen, so
``TRITON_INTERPRET`` can still be set before that.
"""

from .. import _backend

_backend.register_triton_op("sinkhorn")
_backend.register_triton_op("codeswitch")
