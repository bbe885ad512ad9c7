"""kernels: run from the repository root as python -m kernels.NAME (not installed)."""
