"""Installed as ``hydra_plugins.nca_sweeper``: Hydra instantiates a sweeper only from the
``hydra_plugins`` namespace, so the project's sweeper is declared here; its code is
:mod:`nca_cli.sweeping.sweeper`. Kept light: Hydra imports it when it scans for plugins."""

from nca_cli.sweeping.sweeper import OptunaSweeper


class NcaSweeper(OptunaSweeper):
    """``hydra/sweeper=nca``: grids and Optuna searches of training runs."""
