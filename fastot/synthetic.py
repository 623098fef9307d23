"""Deprecated: moved to ``fastot.experiments.synthetic``."""

from ._compat import alias_module

alias_module(__name__, "fastot.experiments.synthetic")
