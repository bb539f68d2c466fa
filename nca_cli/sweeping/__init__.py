"""Sweeps: the project's Optuna sweeper for Hydra (grids and searches that resume, run their
trials through any Hydra launcher and share one study across machines), the function each
trial runs, and the summary (table, CSV, plots) of a study.

Hydra only instantiates sweepers from the ``hydra_plugins`` namespace: the class Hydra sees
is ``hydra_plugins.nca_sweeper.NcaSweeper`` (source: ``nca_cli/sweeping/hydra_plugin``);
:func:`nca_cli.sweeping.config.register` makes it and the search presets known to Hydra.
"""
