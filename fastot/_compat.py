"""Old import paths of fastot 0.1, kept working with a DeprecationWarning.

Two kinds: a module that moved (``fastot.metrics`` is now ``fastot.ir.metrics``) is replaced in ``sys.modules``
by its new module, so the old and the new name are the same object (a monkeypatch on one is seen by the other);
a name that moved out of a module that stays (``fastot.lexicons.read_bitext``) is reached through the module's
``__getattr__``.
"""

from __future__ import annotations

import importlib
import sys
import warnings


def alias_module(old: str, new: str) -> None:
    """Make the module ``old`` (being imported) the module ``new``, with a DeprecationWarning."""
    warnings.warn(f"{old} moved to {new}; import it from there (the old path goes in fastot 0.3)",
                  DeprecationWarning, stacklevel=3)
    sys.modules[old] = importlib.import_module(new)


def moved(module: str, names: dict[str, str]):
    """A module ``__getattr__`` serving ``names`` (name -> new module) with a DeprecationWarning."""

    def __getattr__(name: str):
        if name not in names:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        warnings.warn(f"{module}.{name} moved to {names[name]}.{name}; import it from there "
                      "(the old path goes in fastot 0.3)", DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(names[name]), name)

    return __getattr__
