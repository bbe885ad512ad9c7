"""Training: losses, optimiser groups, sharded steps, the two-phase fit."""
