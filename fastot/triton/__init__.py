"""Triton kernels: ``sinkhorn.py`` (issue 4); code-switching follows (issue 5).

Importing this package does not import Triton: it only tells ``fastot._backend`` which ops have a Triton
implementation. The kernel modules are imported when the triton backend is first chosen, so
``TRITON_INTERPRET`` can still be set before that.
"""

from .. import _backend

_backend.register_triton_op("sinkhorn")
