"""Datasets: manifest folders, FID-300, synthetic shoeprints, the pre-resized cache, batching."""
