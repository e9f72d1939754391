"""Running a farm: Ray connection, chip actors, the driver loop and its progress and summaries.

Thin wrappers over ``farm.simulate``: physics never lives in an actor or in the scheduler.
"""
