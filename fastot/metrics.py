"""Deprecated: moved to ``fastot.ir.metrics``."""

from ._compat import alias_module

alias_module(__name__, "fastot.ir.metrics")
