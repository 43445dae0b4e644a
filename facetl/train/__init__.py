"""Training: the epoch loop, precise batch-norm statistics, and `fit`."""
