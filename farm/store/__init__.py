"""Storage: the Zarr simulation store, its layout, its lock, where it may live, and its checks.

The store knows chunks, completion flags and the settings it was made with; it knows nothing
about AdEx (the simulation side describes its arrays as a ``schema``).
"""
