"""Training data: Zarr stores streamed chunk by chunk, split by index hash, bad rows filtered."""
