"""Deprecated: moved to ``fastot.ir.retrieval``."""

from ._compat import alias_module

alias_module(__name__, "fastot.ir.retrieval")
