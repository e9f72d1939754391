"""The AdEx kernel: numba-compiled dynamics, its vectorised exp and counter-based random numbers.

Pure functions on arrays and plain floats: no Ray, Zarr, logging or globals, so the same inputs
give the same trace bit for bit wherever they run.
"""
