"""Training: the loop, optimisation, guards, checkpoints and logging. No task names here."""
