"""fwjax: JAX/Flax kernels and experiments for forensic footwear impressions.

Import the part you need (``import fwjax.distances``); this package imports nothing heavy.
"""

__version__ = '0.1.0'
