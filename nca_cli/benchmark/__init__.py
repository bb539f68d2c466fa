"""`nca bench`'s cases (engine models described with the engine's own schema) and their timing."""
