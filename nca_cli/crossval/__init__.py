"""K-fold cross-validation: the folds of a case pool, and the driver that trains one run
per fold."""
