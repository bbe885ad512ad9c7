"""Descriptor identification (Budka et al. 2021): data, job, report, plots, the paper's grid."""
