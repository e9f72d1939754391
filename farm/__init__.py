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
    "connect_ray": "farm.raycluster",
    "run_farm": "farm.runner",
    "StoreSchema": "farm.schema",
    "SimBatch": "farm.simulate",
    "sim_schema": "farm.simulate",
    "simulate_theta": "farm.simulate",
    "SimStore": "farm.store",
    "StoreMismatch": "farm.store",
    "StoreSpec": "farm.storespec",
    "open_dataset": "farm.store",
    "check_available": "farm.substrate",
    "get_substrate": "farm.substrate",
    "Substrate": "farm.substrate_base",
    "SubstrateResult": "farm.substrate_base",
    "read_theta": "farm.thetafile",
    "package_version": "farm.versions",
    "StoreLock": "farm.lock",
    "StoreLocked": "farm.lock",
    "StoreRefused": "farm.storepath",
    "verify_store": "farm.verify",
}

__all__ = sorted(_PUBLIC)


__getattr__, __dir__ = lazy_exports(__name__, _PUBLIC)
