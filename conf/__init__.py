"""Hydra configuration tree of nca, shipped inside the package as ``nca_cli.conf``."""
