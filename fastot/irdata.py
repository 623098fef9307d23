"""Deprecated: moved to ``fastot.ir.data``."""

from ._compat import alias_module

alias_module(__name__, "fastot.ir.data")
