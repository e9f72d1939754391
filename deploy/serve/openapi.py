"""The /openapi.json of one served posterior: request bodies with the loaded artifact's limits.

Why: FastAPI documents the static request models of ``deploy.serve.schemas``, whose bounds are the
farm's loosest (any trace length up to a multi-sweep protocol's, any number of features); the
replica then refuses what does not fit the posterior it loaded. A client generated from that
document sends requests that earn a 422 (schemathesis reports them as ST202). So each replica
publishes its own document: the exact trace length or the protocol's sweeps, the ADC code range,
the feature count (no ``features`` at all for trace-only posteriors), exactly one of
``trace``/``features`` as ``oneOf``, the ``num_samples`` bounds and each ``theta`` column's prior
bounds. A circuit-aware posterior's bodies add the ``fingerprint`` of its exact (references,
samples) shape and, where the replica has a circuits store, ``circuit`` with the chip and neuron
ids the store holds, exactly one of the two required; a circuit-marginal posterior's document has
neither field. Everything the document allows is answered, and what it forbids is refused with a
422.
"""

from __future__ import annotations

import copy
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from deploy.serve.circuits import CircuitTable, fingerprint_shape, reference_names
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


def fingerprint_schema(posterior: Any) -> dict[str, Any]:
    """A circuit-aware posterior's ``fingerprint``: one list of codes per reference setting."""
    shape = fingerprint_shape(posterior)
    assert shape is not None, "only circuit-aware posteriors read a fingerprint"
    refs, samples = shape
    top = int(posterior.chip_model.adc_max_code)
    names = reference_names(posterior)
    return {
        "type": "array",
        "items": {
            "type": "array",
            "items": {"type": "integer", "minimum": 0, "maximum": top},
            "minItems": samples,
            "maxItems": samples,
        },
        "minItems": refs,
        "maxItems": refs,
        "description": f"the circuit's recording from `farm fingerprint`: {refs} lists of "
        f"{samples} MADC codes 0..{top}, one per reference setting"
        + (f" ({', '.join(names)})" if names else ""),
    }


def _ids(ids: tuple[int, ...], what: str) -> dict[str, Any]:
    """Integers that are exactly ``ids``: a range when they are contiguous, else an enum."""
    if list(ids) == list(range(ids[0], ids[-1] + 1)):
        return {"type": "integer", "minimum": ids[0], "maximum": ids[-1], "description": what}
    return {"type": "integer", "enum": list(ids), "description": what}


def circuit_schema(table: CircuitTable) -> dict[str, Any]:
    """``circuit``: a chip and a neuron that the replica's circuits store holds."""
    return {
        "type": "object",
        "properties": {
            "chip": _ids(table.chips, "chip id"),
            "neuron": _ids(table.neurons, "neuron on the chip"),
        },
        "required": ["chip", "neuron"],
        "additionalProperties": False,
        "description": "the observation's circuit, looked up in the service's circuits store "
        f"({table.covers()}); instead of `fingerprint`",
    }


def _count(top: int, default: int) -> dict[str, Any]:
    return {"type": "integer", "minimum": 1, "maximum": top, "default": default}


SEED = {
    "anyOf": [{"type": "integer", "minimum": 0, "maximum": MAX_SEED}, {"type": "null"}],
    "default": None,
    "description": "same seed, same draws; seeded requests bypass the batcher",
}


def _body(
    title: str,
    properties: dict[str, Any],
    required: list[str],
    either: bool,
    circuit: tuple[str, ...] = (),
) -> dict[str, Any]:
    """A closed object with exactly one of each group of alternatives.

    Args:
        either: exactly one of trace/features (else trace is required).
        circuit: the circuit fields a circuit-aware posterior takes, exactly one of them:
            ``("fingerprint",)``, ``("fingerprint", "circuit")``, or none (circuit-marginal).
    """
    schema: dict[str, Any] = {
        "title": title,
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
    }
    observation = ("trace", "features") if either else ("trace",)
    groups = [g for g in (observation, circuit) if g]
    required = [g[0] for g in groups if len(g) == 1] + required
    choices = [g for g in groups if len(g) > 1]
    if len(choices) == 1:
        schema["oneOf"] = [{"required": [name]} for name in choices[0]]
    elif choices:  # one of each group: exactly one pair matches
        schema["oneOf"] = [{"required": [a, b]} for a in choices[0] for b in choices[1]]
    if required:
        schema["required"] = required
    return schema


def request_schemas(
    posterior: Any, circuits: CircuitTable | None = None
) -> dict[str, dict[str, Any]]:
    """The three request bodies for ``posterior``, keyed by their component names.

    Args:
        posterior: the served posterior.
        circuits: the replica's circuits store; with a circuit-aware posterior, ``circuit`` may
            name the circuits it holds.
    """
    observation = {"trace": trace_schema(posterior)}
    either = bool(posterior.accepts_features)
    if either:
        observation["features"] = features_schema(posterior)
    circuit: dict[str, Any] = {}
    if fingerprint_shape(posterior) is not None:
        circuit["fingerprint"] = fingerprint_schema(posterior)
        if circuits is not None:
            circuit["circuit"] = circuit_schema(circuits)
    alternatives = tuple(circuit)
    return {
        "SampleRequest": _body(
            "SampleRequest",
            {
                **observation,
                **circuit,
                "num_samples": _count(MAX_NUM_SAMPLES, 1000),
                "seed": SEED,
            },
            [],
            either,
            alternatives,
        ),
        "LogProbRequest": _body(
            "LogProbRequest",
            {**observation, **circuit, "theta": theta_schema(posterior)},
            ["theta"],
            either,
            alternatives,
        ),
        "PredictiveRequest": _body(
            "PredictiveRequest",
            {
                "trace": observation["trace"],
                **circuit,
                "num_samples": _count(MAX_PREDICTIVE_SAMPLES, 10),
                "seed": SEED,
            },
            [],
            False,
            alternatives,
        ),
    }


def served_openapi(
    api: FastAPI, posterior: Any, circuits: CircuitTable | None = None
) -> dict[str, Any]:
    """FastAPI's document for ``api`` with the request bodies of ``posterior``.

    Args:
        api: the service's FastAPI app (its routes, title and version).
        posterior: the loaded ``AmortizedPosterior`` (or ensemble) the replica answers with.
        circuits: the replica's circuits store (``farm serve --circuits``), if any.

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
    components.update(request_schemas(posterior, circuits))
    return document


__all__ = [
    "circuit_schema",
    "fingerprint_schema",
    "request_schemas",
    "served_openapi",
    "trace_schema",
]
