"""The experiments fastot ships, on top of the library: the main job (:func:`demo`), the code-switching-frequency
sweep (:func:`sweep`), the domain split of the shared data (:mod:`.domains`) and the synthetic sample
(:mod:`.synthetic`). They need the ``experiments`` extra (transformers, the MiniLM package, matplotlib)."""

from .main_job import bootstrap_ci, compare_switching, demo, tico_demo
from .sweeps import correlation, summarise_sweep, sweep, sweep_significance

__all__ = ["bootstrap_ci", "compare_switching", "correlation", "demo", "summarise_sweep", "sweep",
           "sweep_significance", "tico_demo"]
