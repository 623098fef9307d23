"""Deprecated: moved to ``fastot.experiments.domains``."""

from ._compat import alias_module

alias_module(__name__, "fastot.experiments.domains")
