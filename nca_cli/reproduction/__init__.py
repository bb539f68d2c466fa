"""Reproductions of published tables: specs, runs, the original code, the comparison."""
