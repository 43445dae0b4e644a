"""Training: batch sources (cached or not), the epoch loop, `fit`, and grids of runs."""
