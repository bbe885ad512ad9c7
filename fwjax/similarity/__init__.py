"""Similarity ranking (de Bie 2020): features, feature cache, job, report pages."""
