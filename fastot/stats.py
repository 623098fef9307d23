"""Deprecated: moved to ``fastot.ir.stats``."""

from ._compat import alias_module

alias_module(__name__, "fastot.ir.stats")
