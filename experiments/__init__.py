"""experiments: run from the repository root as python -m experiments.NAME (not installed)."""
