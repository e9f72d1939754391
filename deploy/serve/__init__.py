"""The Ray Serve application: HTTP schemas, limits, load shedding, health, and `farm serve`."""
