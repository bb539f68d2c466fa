"""Search presets of ``nca sweep search=<name>`` (installed as ``nca_cli.sweeps``)."""
