"""The /openapi.json of one served posterior: request bodies with the loaded artifact's limits.

Why: FastAPI documents the static request models of ``deploy.serve.schemas``, whose bounds are the
farm's loosest (any trace length up to a multi-sweep protocol's, any number of features); the
replica then refuses what does not fit the posterior it loaded. A client generated from that
document sends requests that earn a 422 (schemathesis reports them as ST202). So each replica
publishes its own document: the exact trace length or the protocol's sweeps, the ADC code range,
the feature count (no ``features`` at all for trace-only posteriors), exactly one of
``trace``/``features`` as ``oneOf``, the ``num_samples`` bounds and each ``theta`` column's prior
bounds. Everything the document allows is answered, and what it forbids is refused with a 422.
"""

from __future__ import annotations

import copy
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from deploy.serve.schemas import (
    FEATURE_LIMIT,
    MAX_NUM_SAMPLES,
    MAX_PREDICTIVE_SAMPLES,
    MAX_SEED,
    MAX_THETA_ROWS,
)


def trace_schema(posterior: Any) -> dict[str, Any]:
    """The ``trace`` a posterior reads: T codes flat, or (sweeps, T) for multi-sweep protocols."""
    top = int(posterior.chip_model.adc_max_code)
    length = int(posterior.trace_length)
    protocol = posterior.protocol
    code = {"type": "integer", "minimum": 0, "maximum": top}
    flat = {
        "type": "array",
        "items": code,
        "minItems": length,
        "maxItems": length,
        "description": f"{length} MADC codes 0..{top} of protocol {protocol.label} (1 MSa/s)",
    }
    if protocol.num_sweeps == 1:
        return flat
    sweeps, per_sweep = protocol.observation_shape
    nested = {
        "type": "array",
        "items": {"type": "array", "items": code, "minItems": per_sweep, "maxItems": per_sweep},
        "minItems": sweeps,
        "maxItems": sweeps,
        "description": f"one list of {per_sweep} codes per sweep, {sweeps} sweeps",
    }
    flat["description"] += f": the {sweeps} sweeps back to back"
    return {"oneOf": [flat, nested]}


def features_schema(posterior: Any) -> dict[str, Any]:
    """The handcrafted statistics, in the posterior's order."""
    names = list(posterior.feature_names)
    return {
        "type": "array",
        "items": {"type": "number", "minimum": -FEATURE_LIMIT, "maximum": FEATURE_LIMIT},
        "minItems": len(names),
        "maxItems": len(names),
        "description": "finite statistics in this order: " + ", ".join(names),
    }


def theta_schema(posterior: Any) -> dict[str, Any]:
    """Rows of parameter sets, each column inside its prior bounds (CapMem LSB)."""
    columns = [
        {"type": "number", "minimum": float(lo), "maximum": float(hi), "title": name}
        for name, lo, hi in zip(
            posterior.parameter_names, posterior.prior.low, posterior.prior.high
        )
    ]
    row = {
        "type": "array",
        "prefixItems": columns,
        "items": False,
        "minItems": len(columns),
        "maxItems": len(columns),
    }
    return {
        "type": "array",
        "items": row,
        "minItems": 1,
        "maxItems": MAX_THETA_ROWS,
        "description": "parameter sets in order " + ", ".join(posterior.parameter_names),
    }


def _count(top: int, default: int) -> dict[str, Any]:
    return {"type": "integer", "minimum": 1, "maximum": top, "default": default}


SEED = {
    "anyOf": [{"type": "integer", "minimum": 0, "maximum": MAX_SEED}, {"type": "null"}],
    "default": None,
    "description": "same seed, same draws; seeded requests bypass the batcher",
}


def _body(
    title: str, properties: dict[str, Any], required: list[str], either: bool
) -> dict[str, Any]:
    """A closed object; with ``either``, ``oneOf`` says exactly one of trace/features is given."""
    schema: dict[str, Any] = {
        "title": title,
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
    }
    if either:
        schema["oneOf"] = [{"required": ["trace"]}, {"required": ["features"]}]
    else:
        required = ["trace", *required]
    if required:
        schema["required"] = required
    return schema


def request_schemas(posterior: Any) -> dict[str, dict[str, Any]]:
    """The three request bodies for ``posterior``, keyed by their component names."""
    observation = {"trace": trace_schema(posterior)}
    either = bool(posterior.accepts_features)
    if either:
        observation["features"] = features_schema(posterior)
    return {
        "SampleRequest": _body(
            "SampleRequest",
            {**observation, "num_samples": _count(MAX_NUM_SAMPLES, 1000), "seed": SEED},
            [],
            either,
        ),
        "LogProbRequest": _body(
            "LogProbRequest", {**observation, "theta": theta_schema(posterior)}, ["theta"], either
        ),
        "PredictiveRequest": _body(
            "PredictiveRequest",
            {
                "trace": observation["trace"],
                "num_samples": _count(MAX_PREDICTIVE_SAMPLES, 10),
                "seed": SEED,
            },
            [],
            False,
        ),
    }


def served_openapi(api: FastAPI, posterior: Any) -> dict[str, Any]:
    """FastAPI's document for ``api`` with the request bodies of ``posterior``.

    Args:
        api: the service's FastAPI app (its routes, title and version).
        posterior: the loaded ``AmortizedPosterior`` (or ensemble) the replica answers with.

    Returns:
        The OpenAPI 3.1 document as a dict (a fresh copy: the app's cached one is left alone).
    """
    document = copy.deepcopy(
        get_openapi(
            title=api.title,
            version=api.version,
            openapi_version=api.openapi_version,
            description=api.description,
            routes=api.routes,
        )
    )
    components = document.setdefault("components", {}).setdefault("schemas", {})
    components.update(request_schemas(posterior))
    return document


__all__ = ["request_schemas", "served_openapi", "trace_schema"]
