"""Deprecated: moved to ``fastot.ir.bm25``."""

from ._compat import alias_module

alias_module(__name__, "fastot.ir.bm25")
