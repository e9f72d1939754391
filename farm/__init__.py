"""bss2-farm's simulation layer: emulated BrainScaleS-2 neurons, priors, Zarr stores, the Ray farm.

``import farm`` stays cheap: the public names below load their module on first access.
"""

from __future__ import annotations

from farm.lazy import lazy_exports

#: public name -> module that defines it
_PUBLIC: dict[str, str] = {
    "PARAMETER_NAMES": "farm.defaults",
    "ChipModel": "farm.defaults",
    "PriorBox": "farm.defaults",
    "Protocol": "farm.protocol",
    "Sweep": "farm.protocol",
    "BUILTIN_PROTOCOLS": "farm.protocol",
    "resolve_protocol": "farm.protocol",
    "Regime": "farm.defaults",
    "FarmError": "farm.errors",
    "FarmInputError": "farm.errors",
    "FarmRuntimeError": "farm.errors",
    "FEATURE_NAMES": "farm.features",
    "summarize": "farm.features",
    "feature_names": "farm.features",
    "AnyPrior": "farm.prior",
    "BoxPrior": "farm.prior",
    "PriorDescription": "farm.prior",
    "RestrictedPrior": "farm.prior",
    "load_prior": "farm.prior",
    "prior_from_attrs": "farm.prior",
    "connect_ray": "farm.run.raycluster",
    "FarmConfig": "farm.run.config",
    "run_farm": "farm.run.runner",
    "StoreSchema": "farm.store.schema",
    "SimBatch": "farm.simulate",
    "sim_schema": "farm.simulate",
    "simulate_theta": "farm.simulate",
    "SimStore": "farm.store.sim_store",
    "StoreMismatch": "farm.store.sim_store",
    "StoreSpec": "farm.store.spec",
    "open_dataset": "farm.store.sim_store",
    "check_available": "farm.substrates.registry",
    "get_substrate": "farm.substrates.registry",
    "Substrate": "farm.substrates.base",
    "SubstrateResult": "farm.substrates.base",
    "read_theta": "farm.store.user_arrays",
    "package_version": "farm.versions",
    "StoreLock": "farm.store.lock",
    "StoreLocked": "farm.store.lock",
    "StoreRefused": "farm.store.paths",
    "verify_store": "farm.store.verify",
    "FingerprintConfig": "farm.circuits.runner",
    "run_fingerprint": "farm.circuits.runner",
    "open_fingerprints": "farm.circuits.store",
}

__all__ = sorted(_PUBLIC)


__getattr__, __dir__ = lazy_exports(__name__, _PUBLIC)
