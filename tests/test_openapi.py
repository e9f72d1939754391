"""The served /openapi.json is as strict as the service: schemathesis, all checks, finds no gap.

Two small untrained handcrafted posteriors (no training: the contract holds for any flow) are
written as real artifacts and served by Ray Serve on 127.0.0.1 in the session's local Ray: a
circuit-marginal one, and a circuit-aware one (issue 25) started with a small circuits store, whose
bodies add `fingerprint` or `circuit`. Schemathesis generates schema-valid and schema-invalid
bodies from each replica's own document and runs every check: no 5xx, answers conform to their
schemas, every schema-valid request is answered (ST202 otherwise) and every invalid one refused.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from ray import serve

from deploy.serve.app import posterior_app
from deploy.serve.schemas import MAX_NUM_SAMPLES, MAX_PREDICTIVE_SAMPLES
from farm.circuits import DEFAULT_REFERENCES, ReferenceSet
from farm.defaults import PARAMETER_NAMES, ChipModel, PriorBox, Protocol
from farm.features import FEATURE_NAMES
from farm.prior import AnyPrior, BoxPrior, RestrictedPrior
from inference.nets.nsf import FlowConfig
from tests.cluster import free_port

#: Examples per operation and generation mode: the whole run stays well under a minute.
MAX_EXAMPLES = 15
#: The same for the circuit-aware posterior, whose every request also reads a fingerprint.
AWARE_EXAMPLES = 10
#: Requests the run sent, by operation (printed at the end; the issue reports the counts).
SENT: dict[str, int] = {}


def write_untrained_artifact(
    directory: Path, prior: AnyPrior | None = None, circuits: ReferenceSet | None = None
) -> Path:
    """A real artifact (``write_artifact``): a random 2-transform handcrafted flow.

    With ``circuits``, a circuit-aware one that reads fingerprints taken at those references.
    """
    import torch

    from farm.circuits.statistics import statistic_names
    from inference.artifacts import write_artifact
    from inference.nets.nsf import NPEModel
    from inference.posteriors.amortized import KIND, PRIOR_SUBDIR

    prior = prior or BoxPrior()
    box = PriorBox()
    # Statistics z-scored with std 100: no statistic of any trace leaves the flow's comfortable
    # range, as for a trained posterior.
    stats = {
        "low": list(box.low),
        "high": list(box.high),
        "feature_mean": [0.0] * len(FEATURE_NAMES),
        "feature_std": [100.0] * len(FEATURE_NAMES),
        "theta_mean": [0.0] * 7,
        "theta_std": [1.0] * 7,
        "trace_mean": 0.0,
        "trace_std": 1.0,
    }
    names = [] if circuits is None else list(statistic_names(circuits))
    if names:  # fingerprint statistics z-scored as loosely as the trace's
        stats |= {"circuit_mean": [0.0] * len(names), "circuit_std": [100.0] * len(names)}
    config = FlowConfig(
        variant="handcrafted", transforms=2, hidden_features=16, circuit_statistics=len(names)
    )
    torch.manual_seed(0)
    model = NPEModel(config, stats)
    manifest = {
        "architecture": config.to_dict(),
        "parameter_names": list(PARAMETER_NAMES),
        "feature_names": list(FEATURE_NAMES),
        "protocol": Protocol().to_dict(),
        "chip_model": ChipModel().to_dict(),
        "trace_length": Protocol().num_samples,
        "standardization": stats,
        "prior": prior.to_dict(),
    }
    if circuits is not None:
        manifest["circuits"] = {"names": names, "references": circuits.to_dict()}
    if isinstance(prior, RestrictedPrior):
        prior.save(directory / PRIOR_SUBDIR)
        manifest["prior_dir"] = PRIOR_SUBDIR
    write_artifact(directory, KIND, model.state_dict(), manifest)
    return directory


def write_circuits_store(
    path: Path,
    chips: tuple[int, ...] = (0, 1),
    neurons: tuple[int, ...] = (0, 1, 2, 3),
    references: ReferenceSet = DEFAULT_REFERENCES,
) -> Path:
    """A complete circuits store, recorded in this process (what `farm fingerprint` writes)."""
    from farm.circuits.record import build_substrates, record_fingerprints
    from farm.circuits.store import FingerprintSpec, FingerprintStore

    spec = FingerprintSpec(
        seed=5, chip_ids=chips, neurons=neurons, references=references, chip_model=ChipModel()
    )
    store = FingerprintStore.create_or_resume(str(path), spec)
    substrates = build_substrates("emulator", references, spec.chip_model)
    ids = np.asarray(spec.neurons)
    for k, chip in enumerate(spec.chip_ids):
        store.write_chip(
            k, record_fingerprints(substrates, references, spec.seed, np.full(len(ids), chip), ids)
        )
        store.mark_done(k)
    return path


#: Route of the circuit-aware posterior beside the marginal one at the root.
AWARE = "/aware"


@pytest.fixture(scope="module")
def served_url(ray_session, tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("openapi")
    artifact = write_untrained_artifact(root / "npe-untrained")
    aware = write_untrained_artifact(root / "npe-circuit", circuits=DEFAULT_REFERENCES)
    store = write_circuits_store(root / "circuits.zarr")
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(posterior_app(str(artifact), max_batch_size=4), name="openapi", route_prefix="/")
    serve.run(
        posterior_app(str(aware), max_batch_size=4, circuits=str(store)),
        name="openapi-aware",
        route_prefix=AWARE,
    )
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


@pytest.fixture(scope="module", autouse=True)
def report_request_counts():
    """Print what the schemathesis runs sent, at the module's end (``pytest -s`` shows it)."""
    yield
    if SENT:
        print("\nschemathesis requests:", SENT, "total", sum(SENT.values()))


@pytest.fixture(scope="module")
def document(served_url: str) -> dict:
    return httpx.get(f"{served_url}/openapi.json", timeout=60).json()


@pytest.fixture(scope="module")
def aware_document(served_url: str) -> dict:
    return httpx.get(f"{served_url}{AWARE}/openapi.json", timeout=60).json()


def _schema(base: str):
    config = schemathesis.Config.from_dict({"seed": 28, "request-timeout": 60, "base-url": base})
    return schemathesis.openapi.from_url(f"{base}/openapi.json", config=config)


@pytest.fixture(scope="module")
def served_schema(served_url: str):
    return _schema(served_url)


@pytest.fixture(scope="module")
def aware_schema(served_url: str):
    return _schema(f"{served_url}{AWARE}")


# Schema-valid bodies for every operation; schema-invalid ones where there is a body to break.
# (The lazy ``schemathesis.pytest.from_fixture`` route needs pytest < 9.2's ``Node._nodeid``, so
# each operation's strategy is run by hypothesis here, with every check of ``call_and_validate``.)
RUNS = [
    ("GET", "/health", "positive"),
    ("GET", "/info", "positive"),
    *[
        ("POST", p, m)
        for p in ("/sample", "/log_prob", "/predictive")
        for m in ("positive", "negative")
    ],
]


def _fuzz(
    schema, method: str, path: str, mode: str, label: str = "", examples: int = MAX_EXAMPLES
) -> None:
    from schemathesis.generation.modes import GenerationMode

    operation = schema[path][method]

    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=GenerationMode(mode)))
    def run(case) -> None:
        key = f"{label}{method} {path} {mode}"
        SENT[key] = SENT.get(key, 0) + 1
        case.call_and_validate(timeout=60)

    run()


@pytest.mark.parametrize("method, path, mode", RUNS, ids=[f"{m} {p} {g}" for m, p, g in RUNS])
def test_schemathesis_finds_no_gap_between_document_and_service(served_schema, method, path, mode):
    _fuzz(served_schema, method, path, mode)


#: Schema-valid `features` of +-1e38 make z-scores of ~1e36, on which the flow's splines give a
#: few NaN draws (answered 200 with nulls: ST108). Not a circuit matter: the circuit-marginal
#: flow does it for 2 of 200 such vectors and passes above by the luck of its examples; bounding
#: the z-scored statistics (|z| <= 1e3) in the posterior removes it. Remove this mark with that fix.
#: The circuit-aware posterior's bodies: the GET routes are the same code as above.
AWARE_RUNS = [
    pytest.param(
        m,
        p,
        g,
        id=f"{m} {p} {g}",
    )
    for m, p, g in RUNS
    if m == "POST"
]


@pytest.mark.parametrize("method, path, mode", AWARE_RUNS)
def test_schemathesis_finds_no_gap_for_a_circuit_aware_posterior(aware_schema, method, path, mode):
    """`fingerprint` or `circuit` (the store's ids), exactly one: as documented, so answered."""
    _fuzz(aware_schema, method, path, mode, label="aware ", examples=AWARE_EXAMPLES)


def test_a_circuit_aware_document_states_the_fingerprint_and_the_stores_circuits(
    aware_document, document
):
    schemas = aware_document["components"]["schemas"]
    for name in ("SampleRequest", "LogProbRequest", "PredictiveRequest"):
        fingerprint = schemas[name]["properties"]["fingerprint"]
        assert fingerprint["minItems"] == fingerprint["maxItems"] == 6
        assert fingerprint["items"]["minItems"] == fingerprint["items"]["maxItems"] == 400
        assert fingerprint["items"]["items"] == {"type": "integer", "minimum": 0, "maximum": 1023}
        circuit = schemas[name]["properties"]["circuit"]["properties"]
        assert (circuit["chip"]["minimum"], circuit["chip"]["maximum"]) == (0, 1)
        assert (circuit["neuron"]["minimum"], circuit["neuron"]["maximum"]) == (0, 3)
        # the circuit-marginal posterior's document has neither field
        marginal = document["components"]["schemas"][name]["properties"]
        assert not {"fingerprint", "circuit"} & set(marginal)
    assert schemas["PredictiveRequest"]["required"] == ["trace"]
    assert schemas["PredictiveRequest"]["oneOf"] == [
        {"required": ["fingerprint"]},
        {"required": ["circuit"]},
    ]


@pytest.mark.parametrize("field", ["fingerprint", "circuit"])
def test_a_circuit_marginal_posterior_refuses_circuit_fields(served_url, field):
    value = [[500] * 400] * 6 if field == "fingerprint" else {"chip": 0, "neuron": 0}
    r = httpx.post(f"{served_url}/sample", json={"trace": [500] * 1000, field: value}, timeout=60)
    message = r.json()["message"]
    assert r.status_code == 422 and "\n" not in message, r.text[:300]
    assert message.startswith(f"body.{field}: ") and "circuit-marginal" in message, message


def test_document_states_the_artifacts_limits(document):
    schemas = document["components"]["schemas"]
    sample = schemas["SampleRequest"]
    assert sample["oneOf"] == [{"required": ["trace"]}, {"required": ["features"]}]
    trace = sample["properties"]["trace"]
    assert trace["minItems"] == trace["maxItems"] == 1000
    assert trace["items"] == {"type": "integer", "minimum": 0, "maximum": 1023}
    features = sample["properties"]["features"]
    assert features["minItems"] == features["maxItems"] == 11
    assert sample["properties"]["num_samples"]["maximum"] == MAX_NUM_SAMPLES
    predictive = schemas["PredictiveRequest"]
    assert predictive["required"] == ["trace"] and "features" not in predictive["properties"]
    assert predictive["properties"]["num_samples"]["maximum"] == MAX_PREDICTIVE_SAMPLES
    columns = schemas["LogProbRequest"]["properties"]["theta"]["items"]["prefixItems"]
    box = PriorBox()
    assert [(c["minimum"], c["maximum"]) for c in columns] == list(zip(box.low, box.high))


@pytest.mark.parametrize(
    "path, body",
    [
        ("/predictive", {"trace": [0]}),
        ("/sample", {"trace": [500] * 1000, "features": [0.0] * 11}),
        ("/log_prob", {"features": [0.0], "theta": [[400.0] * 7]}),
    ],
    ids=["short-trace", "trace-and-features", "one-feature"],
)
def test_the_issues_reproductions_are_invalid_by_the_document(document, path, body):
    """The three ST202 reproductions of issue 28: the document forbids what the service refuses."""
    import jsonschema

    ref = document["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
    request = document["components"]["schemas"][ref["$ref"].rsplit("/", 1)[1]]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(request).validate(body)


@pytest.mark.parametrize(
    "body",
    [
        {"trace": [True] * 1000},
        {"trace": ["500"] * 1000},
        {"trace": [500] * 1000, "num_samples": "5"},
        {"trace": [500] * 1000, "num_samples": True},
        {"trace": [500] * 1000, "seed": "7"},
        {"features": ["1.0"] * 11},
        {"features": [False] * 11},
    ],
)
def test_json_types_are_not_coerced(served_url, body):
    """What JSON Schema calls a string or a boolean is refused, not read as a number."""
    r = httpx.post(f"{served_url}/sample", json=body, timeout=60)
    assert r.status_code == 422 and "\n" not in r.json()["message"], r.text[:300]


def test_integral_floats_are_integers(served_url):
    """5.0 is an integer to JSON Schema, so it is answered as 5."""
    body = {"trace": [500.0] * 1000, "num_samples": 5.0, "seed": 3.0}
    r = httpx.post(f"{served_url}/sample", json=body, timeout=60)
    assert r.status_code == 200 and np.shape(r.json()["samples"]) == (5, 7), r.text[:300]


def test_docs_page_reads_the_served_document(served_url):
    page = httpx.get(f"{served_url}/docs", timeout=60)
    assert page.status_code == 200 and "/openapi.json" in page.text


def test_a_multi_sweep_posterior_documents_both_trace_forms():
    """Flat sweeps x T codes, or one list of T codes per sweep: oneOf, as the service accepts."""
    from types import SimpleNamespace

    import jsonschema

    from deploy.serve.openapi import trace_schema
    from farm.protocol import BUILTIN_PROTOCOLS

    protocol = BUILTIN_PROTOCOLS["multi-step"]
    sweeps, per_sweep = protocol.observation_shape
    stub = SimpleNamespace(
        chip_model=ChipModel(), trace_length=sweeps * per_sweep, protocol=protocol
    )
    validator = jsonschema.Draft202012Validator(trace_schema(stub))
    validator.validate([500] * (sweeps * per_sweep))
    validator.validate([[500] * per_sweep] * sweeps)
    for bad in (
        [500] * per_sweep,
        [[500] * per_sweep] * (sweeps - 1),
        [[1024] * per_sweep] * sweeps,
    ):
        assert not validator.is_valid(bad)
