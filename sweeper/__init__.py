"""sweeper: distributed ablation sweeps of networks whose random weights stay frozen while
their normalisation layers' γ and β train (Frankle et al. 2021; Burkholz 2024; Nachum et al. 2024).

    from sweeper import Study, load                       # study files and results (no torch import)
    from sweeper.experiments.train.loop import run_trial  # one trial, without Ray
"""
from sweeper.store import load
from sweeper.study import Search, Study
from sweeper.version import __version__

__all__ = ["Study", "Search", "load", "__version__"]
