"""Substrates: what runs a batch of parameter sets, an emulated chip or a real BSS-2 chip.

``base`` is the interface both implement, ``registry`` builds one by name, ``circuits`` holds the
per-circuit mismatch model that maps CapMem LSB to physical AdEx parameters.
"""
