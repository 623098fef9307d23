"""The experiments fastot ships, on top of the library: the main job (:func:`demo`), the code-switching-frequency
sweep (:func:`sweep`), the domain split of the shared data (:mod:`.domains`) and the synthetic sample
(:mod:`.synthetic`). They need the ``experiments`` extra (transformers, the MiniLM package, matplotlib)."""

from ._report import markdown_table
from .main_job import TICO_TRAIN, bootstrap_ci, compare_switching, demo, tico_demo
from .sweeps import (
    DOMAIN_PRESETS,
    DOMAIN_SCALES,
    DOMAIN_TRAIN,
    SIGNIFICANCE_METRICS,
    SYNTHETIC_SWEEP,
    correlation,
    domain_preset,
    summarise_sweep,
    sweep,
    sweep_significance,
)

# every public name of the fastot.experiments module of fastot 0.1 is still here
__all__ = ["DOMAIN_PRESETS", "DOMAIN_SCALES", "DOMAIN_TRAIN", "SIGNIFICANCE_METRICS", "SYNTHETIC_SWEEP", "TICO_TRAIN",
           "bootstrap_ci", "compare_switching", "correlation", "demo", "domain_preset", "markdown_table",
           "summarise_sweep", "sweep", "sweep_significance", "tico_demo"]
