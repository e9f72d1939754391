"""Training: tasks (what is fitted with which loss), the Ray Train loop, artifacts written after.

``api.train`` is the entry point `farm train` calls; ``trainer`` runs one model, ``ensemble``
runs K of them on top of it; ``outcome`` is what a finished run hands the artifact writers.
``schedule`` lays out a run's steps (the data's batch size, rounds of a large store, warm-up).
"""
