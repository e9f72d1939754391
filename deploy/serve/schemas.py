"""Request and response bodies of the posterior HTTP API (pydantic; they cross a process boundary).

Why pydantic and ``extra="forbid"``: every malformed body must become an HTTP 422 naming the bad
field before it reaches torch, so a bad request can never take a replica down, and no body can
smuggle in a file path (there is no field that takes one). Shapes that depend on the served
artifact (trace length, number of features, the prior box) are checked again by the service
against the loaded posterior; the defaults here are the farm's protocol and feature set.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import (
    AllowInfNan,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    model_validator,
)

from farm.defaults import NEURONS_PER_CHIP, NUM_EMULATED_CHIPS, PARAMETER_NAMES, ChipModel, Protocol
from farm.features import FEATURE_NAMES
from farm.protocol import MAX_OBSERVATION_SAMPLES, MAX_SWEEPS

#: Largest number of posterior draws one /sample request may ask for (docs/http-api.md).
MAX_NUM_SAMPLES = 10_000
#: Largest number of parameter sets one /log_prob request may evaluate.
MAX_THETA_ROWS = 10_000
#: Largest number of posterior-predictive simulations one /predictive request may ask for.
MAX_PREDICTIVE_SAMPLES = 200
#: Largest request body in bytes (413 above it). The biggest valid body, /log_prob with
#: MAX_THETA_ROWS rows of 7 floats written in full (~20 characters each with the separator) plus a
#: trace, is ~1.5 MB.
MAX_BODY_BYTES = 2 * 1024 * 1024
#: Seeds are unsigned 32-bit so every client language can send them exactly.
MAX_SEED = 2**32 - 1

TRACE_LENGTH = Protocol().num_samples
NUM_FEATURES = len(FEATURE_NAMES)
NUM_PARAMETERS = len(PARAMETER_NAMES)
ADC_MAX_CODE = ChipModel().adc_max_code


def _json_integer(value: Any) -> Any:
    """Refuse what JSON Schema's ``integer`` refuses but pydantic's lax mode would coerce.

    Why: the published document (deploy.serve.openapi) says ``integer``; ``true`` or ``"5"``
    accepted as 1 or 5 would make the service looser than its schema. 5.0 is an integer to JSON
    Schema, so it stays accepted (lax mode turns it into 5, and refuses 5.5).
    """
    if isinstance(value, bool | str | bytes):
        raise ValueError(f"must be a JSON integer, not {type(value).__name__}")
    return value


_NOT_INTEGERS = frozenset({bool, str, bytes})


def _json_integers(values: Any) -> Any:
    """``_json_integer`` for a whole list at once: one pass, not a validator call per code."""
    if isinstance(values, list) and not _NOT_INTEGERS.isdisjoint(map(type, values)):
        raise ValueError("codes must be JSON integers, not booleans or strings")
    return values


JsonInt = Annotated[int, BeforeValidator(_json_integer)]
#: Largest magnitude of a statistic: the posterior reads float32, so a larger number becomes inf.
FEATURE_LIMIT = 3.4e38
#: A finite JSON number: ints are accepted, booleans and numeric strings are not.
FiniteFloat = Annotated[float, Strict(), AllowInfNan(False)]
AdcCode = Annotated[int, Field(ge=0, le=ADC_MAX_CODE)]
# The served protocol fixes the exact shape; the service checks it (one 422 line naming the expected
# shape), and each replica's /openapi.json states it (deploy.serve.openapi).
FlatTrace = Annotated[
    list[AdcCode],
    BeforeValidator(_json_integers),
    Field(
        min_length=1,
        max_length=MAX_OBSERVATION_SAMPLES,
        description=f"MADC codes 0..{ADC_MAX_CODE} at 1 MSa/s: {TRACE_LENGTH} for the step "
        "protocol, sweeps x samples per sweep (flat) for multi-sweep ones",
    ),
]
SweepTraces = Annotated[
    list[FlatTrace],
    Field(
        min_length=2,
        max_length=MAX_SWEEPS,
        description="one list of codes per sweep (multi-sweep protocols)",
    ),
]
Trace = FlatTrace | SweepTraces
#: Static bounds of a fingerprint; the served posterior fixes its exact (references, samples) shape
#: (each replica's /openapi.json states it, and the service refuses any other with one 422 line).
MAX_FINGERPRINT_REFERENCES = MAX_SWEEPS
MAX_FINGERPRINT_SAMPLES = 10_000
Fingerprint = Annotated[
    list[
        Annotated[
            list[AdcCode],
            BeforeValidator(_json_integers),
            Field(min_length=1, max_length=MAX_FINGERPRINT_SAMPLES),
        ]
    ],
    Field(
        min_length=1,
        max_length=MAX_FINGERPRINT_REFERENCES,
        description="the circuit's recording from `farm fingerprint`: one list of MADC codes "
        f"0..{ADC_MAX_CODE} per reference setting, (references, samples), e.g. (6, 400); "
        "circuit-aware posteriors only",
    ),
]
Features = Annotated[
    list[Annotated[FiniteFloat, Field(ge=-FEATURE_LIMIT, le=FEATURE_LIMIT)]],
    Field(
        min_length=1,
        max_length=NUM_FEATURES * MAX_SWEEPS,
        description="handcrafted statistics in the posterior's feature_names order",
    ),
]
ThetaRow = Annotated[list[FiniteFloat], Field(min_length=NUM_PARAMETERS, max_length=NUM_PARAMETERS)]
Seed = Annotated[
    JsonInt | None,
    Field(
        default=None,
        ge=0,
        le=MAX_SEED,
        description="same seed, same draws; seeded requests bypass the batcher",
    ),
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Circuit(_Strict):
    """One circuit by its ids, looked up in the service's circuits store (``--circuits``)."""

    chip: Annotated[JsonInt, Field(ge=0, le=NUM_EMULATED_CHIPS - 1, description="chip id")]
    neuron: Annotated[
        JsonInt, Field(ge=0, le=NEURONS_PER_CHIP - 1, description="neuron on the chip")
    ]


CircuitField = Annotated[
    Circuit | None,
    Field(
        default=None,
        description="the circuit the observation was recorded on, resolved through the circuits "
        "store the service was started with (`farm serve --circuits`); instead of `fingerprint`",
    ),
]


class CircuitOf(_Strict):
    """Which circuit an observation came from (circuit-aware posteriors): one of the two fields.

    Which of them a request must carry depends on the served posterior, so the service checks it
    (``deploy.serve.circuits.resolve``) and each replica's /openapi.json states it.
    """

    fingerprint: Fingerprint | None = None
    circuit: CircuitField = None


class Observation(CircuitOf):
    """One observation: a raw trace, or (handcrafted posteriors only) its statistics."""

    trace: Trace | None = None
    features: Features | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Observation:
        if (self.trace is None) == (self.features is None):
            raise ValueError("give exactly one of `trace` or `features`")
        return self


class SampleRequest(Observation):
    """POST /sample: draws from p(theta | x)."""

    num_samples: Annotated[JsonInt, Field(ge=1, le=MAX_NUM_SAMPLES)] = 1000
    seed: Seed = None


class LogProbRequest(Observation):
    """POST /log_prob: log p(theta | x) per row of theta (CapMem LSB, PARAMETER_NAMES order)."""

    theta: Annotated[list[ThetaRow], Field(min_length=1, max_length=MAX_THETA_ROWS)]


class PredictiveRequest(CircuitOf):
    """POST /predictive: simulate traces on the emulator at posterior draws."""

    trace: Trace
    num_samples: Annotated[JsonInt, Field(ge=1, le=MAX_PREDICTIVE_SAMPLES)] = 10
    seed: Seed = None


class Misspecification(BaseModel):
    """Is the observation like the training data? (``AmortizedPosterior.misspecification``)."""

    score: float | None = Field(
        description="kNN distance in summary space; null for artifacts without calibration"
    )
    threshold: float | None = Field(
        description="quantile of held-out in-distribution scores (95 %, or the one quantile shared "
        "with the trace-space check that keeps both at 5 % false alarms); null with score"
    )
    trace_score: float | None = Field(
        None,
        description="trace-space score (the least likely statistic of the raw trace, "
        "inference.diagnostics.trace_check); null where no trace was sent, or the artifact has "
        "no trace-space check (older artifacts, multi-sweep protocols)",
    )
    trace_threshold: float | None = Field(
        None, description="held-out quantile of trace-space scores; null with trace_score"
    )
    flagged: bool = Field(
        description="true when any reason applies: do not trust the posterior for this observation"
    )
    reasons: list[str] = Field(
        description="one line each, naming its check: spike count outside the regime, flat or "
        "saturated trace, summary score above threshold, trace score above trace_threshold "
        "(`trace unlike the training traces: <statistic> ...`), fingerprint unlike the training "
        "circuits', or (on a refusal) no draws inside the restricted prior"
    )
    note: str | None = Field(
        None, description="why score (or the artifact's trace check) is missing, when it is"
    )


class ErrorDetail(BaseModel):
    """One problem of a refused request, pydantic-style."""

    loc: list[str | int] = Field(description="where: `body` then the field")
    msg: str
    type: str = Field(description="`rejection_budget_exceeded` for a refused observation")


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer: a one-line ``message``, and for a refused observation its check."""

    detail: list[ErrorDetail] | str
    message: str = Field(description="one line naming the bad field and what is allowed")
    misspecification: Misspecification | None = Field(
        None,
        description="on a 422 that refuses the observation itself (no draws could be made): "
        "its misspecification check, flagged, with the reason",
    )


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


#: The error answers of the POST routes, documented in /openapi.json (docs/http-api.md, Errors).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    413: _error("body larger than MAX_BODY_BYTES"),
    422: _error("a body that does not fit this posterior, or an observation it cannot answer"),
    503: _error("the replica's queue is full: retry after the Retry-After header's seconds"),
    504: _error("no answer from the model within the service's deadline"),
}


class SampleResponse(BaseModel):
    parameter_names: list[str]
    num_samples: int
    seed: int | None
    samples: list[list[float]]
    mean: list[float]
    std: list[float]
    map: list[float] = Field(description="highest-density draw among the returned samples")
    fingerprint: str
    batch_size: int = Field(description="requests that shared this forward pass (1 when unbatched)")
    misspecification: Misspecification


class LogProbResponse(BaseModel):
    parameter_names: list[str]
    log_prob: list[float | None] = Field(
        description="null where the density is -inf (outside the prior support)"
    )
    fingerprint: str
    misspecification: Misspecification


class PredictiveResponse(BaseModel):
    parameter_names: list[str]
    seed: int
    theta: list[list[float]]
    traces: list[list[int]]
    spike_count: list[int]
    observed_spike_count: int
    circuit: Circuit | None = Field(
        None,
        description="the circuit every draw was simulated on (the request's `circuit`); null: "
        "the seed's placement, a random circuit per draw",
    )
    fingerprint: str
    misspecification: Misspecification


class HealthResponse(BaseModel):
    status: str
    model: str
    variant: str
    fingerprint: str
    version: str
    emulator_version: str
    replica: str = Field(description="id of the Serve replica that answered")
    protocol: str = Field(
        "step",
        description="the stimulus protocol observations must come from (GET /info has its sweeps)",
    )


class ParameterInfo(BaseModel):
    name: str
    unit: str
    low: float
    high: float


class CircuitsInfo(BaseModel):
    """The circuits a service's store holds: every listed chip with every listed neuron."""

    chips: list[int]
    neurons: list[int]


class InfoResponse(BaseModel):
    variant: str
    fingerprint: str
    parameters: list[ParameterInfo]
    prior: dict
    trace_length: int
    adc_max_code: int
    accepts_features: bool
    feature_names: list[str]
    feature_units: dict[str, str]
    limits: dict[str, int]
    protocol: dict
    protocol_name: str = Field(description="step, multi-step, or a custom protocol's name")
    observation_shape: list[int] = Field(
        description="[T] for one sweep, [sweeps, T] for several; the flat form of sweeps * T "
        "codes is accepted too"
    )
    circuit_aware: bool = Field(
        False,
        description="true: every observation needs its circuit's `fingerprint` (or `circuit`)",
    )
    fingerprint_shape: list[int] | None = Field(
        None,
        description="[references, samples] of a request's `fingerprint` (the circuit's "
        "recording; the top-level `fingerprint` is the artifact's id); null if circuit-marginal",
    )
    fingerprint_references: list[str] = Field(
        default_factory=list,
        description="the reference settings of a fingerprint, in order (`farm fingerprint`'s)",
    )
    circuits: CircuitsInfo | None = Field(
        None,
        description="the ids a `circuit` may name (the store of `farm serve --circuits`); null "
        "without one",
    )
