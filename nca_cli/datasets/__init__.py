"""Data sets: real loaders for the published files, verified downloads, seeded splits."""
