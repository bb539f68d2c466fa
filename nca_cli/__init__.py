"""nca: a command-line experiment runner for Neural Cellular Automata research."""

__version__ = "0.1.0"
