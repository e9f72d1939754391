"""The served posterior takes circuit fingerprints (issue 25): `fingerprint`, or `circuit` ids.

Without Serve: every rule of a request's circuit fields is one 422 line naming the field
(``deploy.serve.circuits.resolve``), the per-replica document states them exactly, a batch stacks
the fingerprints beside the traces, `farm query` and `farm serve` refuse bad options with exit 2
and one line. With Serve (one deployment, in the shared Serve of tests/serving.py): a small
circuit-aware posterior started with a circuits store answers `fingerprint` and `circuit` alike,
refuses the rest with one 422 line, reruns /predictive on the observation's own circuit, and
passes schemathesis with all checks.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import jsonschema
import numpy as np
import pytest

from deploy.cli import main
from deploy.serve.circuits import CircuitTable, resolve
from deploy.serve.http_errors import RequestRejected
from farm.circuits import DEFAULT_REFERENCES
from farm.defaults import ChipModel, PriorBox, Protocol
from tests.test_openapi import write_circuits_store, write_untrained_artifact

SHAPE = (len(DEFAULT_REFERENCES.references), DEFAULT_REFERENCES.samples_per_reference)
TRACE = [500] * Protocol().num_samples


def stub(aware: bool, **extra) -> SimpleNamespace:
    """What the serving code reads of a posterior, for rules that need no model."""
    from farm.defaults import PARAMETER_NAMES
    from farm.features import FEATURE_NAMES
    from farm.prior import BoxPrior

    circuit = (
        {
            "circuit_aware": True,
            "fingerprint_shape": SHAPE,
            "circuit_references": DEFAULT_REFERENCES,
        }
        if aware
        else {}
    )
    return SimpleNamespace(
        chip_model=ChipModel(),
        protocol=Protocol(),
        trace_length=Protocol().num_samples,
        accepts_features=True,
        feature_names=FEATURE_NAMES,
        parameter_names=PARAMETER_NAMES,
        prior=BoxPrior(),
        **circuit,
        **extra,
    )


@pytest.fixture(scope="module")
def sim_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two emulator samples, each with the circuit it ran on."""
    from farm.run.config import FarmConfig
    from farm.run.runner import run_farm

    path = tmp_path_factory.mktemp("sims") / "sims.zarr"
    run_farm(FarmConfig(str(path), num_sims=2, seed=3, chunk_size=2, in_process=True))
    return path


@pytest.fixture(scope="module")
def sample_circuit(sim_store: Path) -> tuple[int, int]:
    from deploy.client import load_store_circuit

    return load_store_circuit(str(sim_store), 0)


@pytest.fixture(scope="module")
def circuits_store(tmp_path_factory: pytest.TempPathFactory, sample_circuit) -> Path:
    """Chips 0 and 1 with neurons 0-3, and the circuit of `sim_store`'s sample 0."""
    chip, neuron = sample_circuit
    return write_circuits_store(
        tmp_path_factory.mktemp("circuits") / "circuits.zarr",
        chips=tuple(sorted({0, 1, chip})),
        neurons=tuple(sorted({0, 1, 2, 3, neuron})),
    )


@pytest.fixture(scope="module")
def table(circuits_store: Path) -> CircuitTable:
    return CircuitTable.load(str(circuits_store), stub(True))


# ---------------------------------------------------------------- request rules (no Serve)
def _rejected(posterior, table, **fields) -> RequestRejected:
    with pytest.raises(RequestRejected) as info:
        resolve(posterior, table, **fields)
    assert "\n" not in info.value.message, info.value.message
    return info.value


def test_a_circuit_marginal_posterior_takes_neither_field_and_is_otherwise_unchanged():
    marginal = stub(False)
    assert resolve(marginal, None).keywords == {}
    e = _rejected(marginal, None, fingerprint=np.zeros(SHAPE))
    assert e.field == "fingerprint" and "circuit-marginal" in e.message
    e = _rejected(marginal, None, circuit=SimpleNamespace(chip=0, neuron=1))
    assert e.field == "circuit" and "circuit-marginal" in e.message


def test_a_circuit_aware_posterior_without_either_field_names_fingerprint(table):
    e = _rejected(stub(True), table)
    assert e.field == "fingerprint" and "missing" in e.message and "6 x 400" in e.message
    assert "`circuit`" in e.message and table.covers() in e.message
    e = _rejected(stub(True), None)  # no store: the message does not offer `circuit`
    assert "needs a service started with --circuits" in e.message


@pytest.mark.parametrize(
    "codes", [np.zeros((6, 399)), np.zeros((5, 400)), np.zeros(2400), [[1, 2], [3]]]
)
def test_a_fingerprint_of_the_wrong_shape_names_the_expected_one(codes):
    e = _rejected(stub(True), None, fingerprint=codes)
    assert e.field == "fingerprint" and "(6, 400)" in e.message and "leak" in e.message


def test_circuit_needs_the_store_and_a_circuit_it_holds(table):
    e = _rejected(stub(True), None, circuit=SimpleNamespace(chip=0, neuron=1))
    assert e.field == "circuit" and "farm serve --circuits" in e.message
    e = _rejected(stub(True), table, circuit=SimpleNamespace(chip=1023, neuron=511))
    assert e.field == "circuit" and "1023:511" in e.message and table.covers() in e.message
    assert table.covers().startswith("chips 0-1")
    e = _rejected(
        stub(True), table, circuit=SimpleNamespace(chip=0, neuron=1), fingerprint=np.zeros(SHAPE)
    )
    assert "exactly one" in e.message


def test_circuit_resolves_to_the_stores_fingerprint(table, circuits_store):
    from farm.circuits import open_fingerprints

    got = resolve(stub(True), table, circuit=SimpleNamespace(chip=1, neuron=2))
    want = open_fingerprints(str(circuits_store)).fingerprint.sel(chip=1, neuron=2).values
    assert got.circuit == (1, 2) and np.array_equal(got.keywords["fingerprint"], want)
    sent = resolve(stub(True), table, fingerprint=want.tolist())
    assert sent.circuit is None and np.array_equal(sent.keywords["fingerprint"], want)


def test_a_store_of_other_references_or_for_a_marginal_posterior_is_refused(
    circuits_store, tmp_path
):
    from farm.circuits.references import ReferenceSet

    with pytest.raises(ValueError, match="circuit-marginal.*drop --circuits"):
        CircuitTable.load(str(circuits_store), stub(False))
    fewer = ReferenceSet(DEFAULT_REFERENCES.references[:3])
    other = write_circuits_store(
        tmp_path / "other.zarr", chips=(0,), neurons=(0,), references=fewer
    )
    with pytest.raises(ValueError, match="recorded at references") as info:
        CircuitTable.load(str(other), stub(True))
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="does not exist"):
        CircuitTable.load(str(tmp_path / "missing.zarr"), stub(True))


# ---------------------------------------------------------------- the document (no Serve)
def _validator(schema: dict) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(schema)


def test_a_circuit_marginal_document_has_no_circuit_fields():
    from deploy.serve.openapi import request_schemas

    for name, body in request_schemas(stub(False)).items():
        assert not {"fingerprint", "circuit"} & set(body["properties"]), name
    assert request_schemas(stub(False))["SampleRequest"]["oneOf"] == [
        {"required": ["trace"]},
        {"required": ["features"]},
    ]


def test_a_circuit_aware_document_states_the_fingerprint_and_the_stores_circuits():
    from deploy.serve.openapi import request_schemas

    table = CircuitTable(chips=(0, 1), neurons=(0, 1, 2, 3), codes=np.zeros((2, 4, *SHAPE)))
    fp = np.full(SHAPE, 500).tolist()
    alone = request_schemas(stub(True))  # no store: fingerprint required, no circuit
    sample = _validator(alone["SampleRequest"])
    assert sample.is_valid({"trace": TRACE, "fingerprint": fp})
    assert not sample.is_valid({"trace": TRACE})
    assert not sample.is_valid({"trace": TRACE, "circuit": {"chip": 0, "neuron": 0}})
    item = alone["SampleRequest"]["properties"]["fingerprint"]
    assert (item["minItems"], item["items"]["maxItems"]) == SHAPE
    assert item["items"]["items"] == {"type": "integer", "minimum": 0, "maximum": 1023}

    schemas = request_schemas(stub(True), table)
    circuit = schemas["SampleRequest"]["properties"]["circuit"]["properties"]
    assert (circuit["chip"]["minimum"], circuit["chip"]["maximum"]) == (0, 1)
    assert (circuit["neuron"]["minimum"], circuit["neuron"]["maximum"]) == (0, 3)
    feats = [0.0] * 11
    for name, extra in (
        ("SampleRequest", {}),
        ("LogProbRequest", {"theta": [list(PriorBox().low)]}),
    ):
        v = _validator(schemas[name])
        ok = [
            {"trace": TRACE, "fingerprint": fp},
            {"features": feats, "circuit": {"chip": 1, "neuron": 3}},
        ]
        bad = [
            {"trace": TRACE},
            {"trace": TRACE, "fingerprint": fp, "circuit": {"chip": 1, "neuron": 3}},
            {"trace": TRACE, "features": feats, "fingerprint": fp},
            {"trace": TRACE, "circuit": {"chip": 2, "neuron": 0}},  # not in the store
            {"trace": TRACE, "fingerprint": fp[:5]},
        ]
        assert all(v.is_valid(b | extra) for b in ok), name
        assert not any(v.is_valid(b | extra) for b in bad), name
    predictive = _validator(schemas["PredictiveRequest"])
    assert predictive.is_valid({"trace": TRACE, "circuit": {"chip": 0, "neuron": 0}})
    assert not predictive.is_valid({"trace": TRACE})


def test_scattered_ids_are_an_enum():
    from deploy.serve.openapi import circuit_schema

    table = CircuitTable(chips=(1, 5), neurons=(0, 1, 2), codes=np.zeros((2, 3, *SHAPE), np.int16))
    chip = circuit_schema(table)["properties"]["chip"]
    assert chip["enum"] == [1, 5] and "minimum" not in chip


# ---------------------------------------------------------------- model calls (no Serve)
def test_a_batch_stacks_each_jobs_fingerprint_beside_its_trace():
    from deploy.serve.model_calls import Job, draw_batch, draw_one

    calls: list[dict] = []

    class Recorder:
        circuit_aware = True

        def sample_and_assess(self, n, *, seed=None, normalized=True, **batched):
            calls.append(batched)
            rows = len(next(iter(batched.values())))
            return np.zeros((rows, n, 7), np.float32), np.zeros((rows, n)), [{}] * rows

    prints = [np.full(SHAPE, k, dtype=np.int16) for k in range(3)]
    jobs = [Job(2, {"trace": np.full(1000, 500, np.int16), "fingerprint": f}) for f in prints]
    results = draw_batch(Recorder(), jobs)
    assert len(calls) == 1 and calls[0]["fingerprints"].shape == (3, *SHAPE)
    assert [int(f[0, 0]) for f in calls[0]["fingerprints"]] == [0, 1, 2]
    assert all(r[2] == 3 for r in results)
    draw_one(Recorder(), 2, jobs[1].observation, seed=1)
    assert calls[-1]["fingerprints"].shape == (1, *SHAPE) and calls[-1]["traces"].shape == (1, 1000)


# ---------------------------------------------------------------- command line (no Serve)
@pytest.fixture(scope="module")
def trace_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("query") / "trace.npy"
    np.save(path, np.full(1000, 500, dtype=np.int16))
    return path


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--circuit", "3x"], "CHIP:NEURON"),
        (["--circuit", "3:"], "CHIP:NEURON"),
        (["--circuit", "1024:0"], "chip 1024 outside [0, 1023]"),
        (["--circuit", "0:512"], "neuron 512 outside [0, 511]"),
        (["--circuit", "1:2", "--fingerprint", "f.npy"], "at most one"),
        (["--fingerprint", "missing.npy"], "does not exist"),
        (["--fingerprint", "flat.npy"], "(references, time)"),
    ],
)
def test_farm_query_refuses_bad_circuit_options_with_one_line(
    trace_file, tmp_path, capsys, monkeypatch, extra, expected
):
    monkeypatch.chdir(tmp_path)
    np.save(tmp_path / "flat.npy", np.zeros(2400, dtype=np.int16))
    # port 9 (discard): nothing is asked of a server before the options are checked
    code = main(["query", "--url", "http://127.0.0.1:9", "--trace", str(trace_file), *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and expected in err and len(err.splitlines()) == 1, err


def test_farm_serve_refuses_a_circuits_store_it_cannot_use_before_starting_ray(
    tmp_path, circuits_store, capsys
):
    marginal = write_untrained_artifact(tmp_path / "npe")
    code = main(["serve", "--posterior", str(marginal), "--circuits", str(circuits_store)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "circuit-marginal" in err and "drop --circuits" in err, err
    assert len(err.splitlines()) == 1, err


def test_the_help_teaches_the_circuit_options(capsys):
    for verb, words in (
        ("query", ("--circuit", "CHIP:NEURON", "--fingerprint", "(references, time)")),
        ("serve", ("--circuits", "farm fingerprint", "circuit-aware")),
    ):
        assert main([verb, "--help"]) == 0
        out = " ".join(capsys.readouterr().out.split())
        assert all(w in out for w in words), (verb, out)


# ---------------------------------------------------------------- served (one deployment)
#: Route of this module's deployment, beside whatever another module serves at the root.
ROUTE = "/circuits"


@pytest.fixture(scope="module")
def aware_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained circuit-aware handcrafted posterior: the contract holds for any flow."""
    return write_untrained_artifact(
        tmp_path_factory.mktemp("aware") / "npe-circuit", circuits=DEFAULT_REFERENCES
    )


@pytest.fixture(scope="module")
def aware(aware_artifact: Path):
    from inference import load_posterior

    return load_posterior(aware_artifact)


@pytest.fixture(scope="module")
def aware_url(serve_url: str, aware_artifact: Path, circuits_store: Path):
    from ray import serve

    from deploy.serve.app import posterior_app

    app = posterior_app(
        str(aware_artifact),
        max_batch_size=4,
        batch_wait_timeout_s=0.05,
        circuits=str(circuits_store),
    )
    serve.run(app, name="circuits", route_prefix=ROUTE)
    yield f"{serve_url}{ROUTE}"
    serve.delete("circuits")  # its replica's CPU goes back to the modules that follow


@pytest.fixture
def http(aware_url: str):
    import httpx

    with httpx.Client(base_url=aware_url, timeout=120.0) as c:
        yield c


@pytest.fixture(scope="module")
def recorded(circuits_store: Path):
    """Sample 0's trace, and the fingerprint of circuit 1:2 from the store."""
    from farm.circuits import open_fingerprints
    from farm.prior import BoxPrior
    from farm.simulate import simulate_theta

    sims = simulate_theta(BoxPrior().sample(1, seed=11), seed=11, chip=1, neuron=2)
    fp = open_fingerprints(str(circuits_store)).fingerprint.sel(chip=1, neuron=2).values
    return sims.trace[0], fp


def test_info_says_what_the_posterior_and_the_store_take(http, circuits_store, sample_circuit):
    info = http.get("/info").json()
    assert info["circuit_aware"] is True and info["fingerprint_shape"] == list(SHAPE)
    assert info["fingerprint_references"] == list(DEFAULT_REFERENCES.names)
    assert (
        info["circuits"]["chips"][:2] == [0, 1] and sample_circuit[1] in info["circuits"]["neurons"]
    )


def test_fingerprint_and_circuit_give_the_librarys_answer(http, aware, recorded):
    trace, fp = recorded
    body = {"trace": trace.tolist(), "num_samples": 50, "seed": 4}
    by_id = http.post("/sample", json=body | {"circuit": {"chip": 1, "neuron": 2}})
    by_codes = http.post("/sample", json=body | {"fingerprint": fp.tolist()})
    assert by_id.status_code == by_codes.status_code == 200, (by_id.text, by_codes.text)
    want = aware.sample(50, trace=trace, fingerprint=fp, seed=4)
    assert np.allclose(by_id.json()["samples"], want, rtol=1e-4)
    assert by_id.json()["samples"] == by_codes.json()["samples"]

    theta = want[:3].astype(float).tolist()
    r = http.post(
        "/log_prob",
        json={"trace": trace.tolist(), "theta": theta, "circuit": {"chip": 1, "neuron": 2}},
    )
    assert r.status_code == 200, r.text
    assert np.allclose(
        r.json()["log_prob"],
        aware.log_prob(np.asarray(theta), trace=trace, fingerprint=fp),
        rtol=1e-4,
        atol=1e-4,
    )


def test_predictive_reruns_the_draws_on_the_observations_own_circuit(http, recorded):
    from farm.simulate import simulate_theta

    trace, fp = recorded
    body = {"trace": trace.tolist(), "num_samples": 3, "seed": 9}
    own = http.post("/predictive", json=body | {"circuit": {"chip": 1, "neuron": 2}}).json()
    assert own["circuit"] == {"chip": 1, "neuron": 2}
    rerun = simulate_theta(np.asarray(own["theta"], np.float32), seed=9, chip=1, neuron=2)
    assert own["traces"] == rerun.trace.astype(int).tolist()
    placed = http.post("/predictive", json=body | {"fingerprint": fp.tolist()}).json()
    assert placed["circuit"] is None and placed["theta"] == own["theta"]
    anywhere = simulate_theta(np.asarray(placed["theta"], np.float32), seed=9)
    assert placed["traces"] == anywhere.trace.astype(int).tolist()


def test_concurrent_requests_on_different_circuits_are_each_answered(aware_url, recorded):
    """Unseeded /sample requests share a pass: each with its own fingerprint, row by row."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    trace, _ = recorded

    def ask(neuron: int) -> httpx.Response:
        body = {
            "trace": trace.tolist(),
            "num_samples": 20,
            "circuit": {"chip": 0, "neuron": neuron},
        }
        return httpx.post(f"{aware_url}/sample", json=body, timeout=120)

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(ask, [0, 1, 2, 3]))
    assert all(r.status_code == 200 for r in answers), [r.text[:200] for r in answers]
    assert all(np.shape(r.json()["samples"]) == (20, 7) for r in answers)


BAD = [
    ({}, "body.fingerprint: missing", "6 x 400"),
    ({"fingerprint": [[500] * 400] * 5}, "body.fingerprint: shape (5, 400)", "(6, 400)"),
    ({"fingerprint": [[500] * 399] * 6}, "body.fingerprint: shape (6, 399)", "(6, 400)"),
    ({"fingerprint": [[1024] * 400] * 6}, "body.fingerprint", "1023"),
    (
        {"fingerprint": [[500] * 400] * 6, "circuit": {"chip": 0, "neuron": 0}},
        "body.fingerprint",
        "exactly one",
    ),
    ({"circuit": {"chip": 1023, "neuron": 511}}, "body.circuit: chip:neuron 1023:511", "chips 0-1"),
    ({"circuit": {"chip": 0, "neuron": 512}}, "body.circuit.neuron", "511"),
    ({"circuit": {"chip": 0}}, "body.circuit.neuron", "required"),
    ({"circuit": {"chip": 0, "neuron": 0, "store": "x"}}, "body.circuit.store", ""),
]


@pytest.mark.parametrize("path", ["/sample", "/predictive"])
@pytest.mark.parametrize("fields, start, part", BAD, ids=[str(i) for i in range(len(BAD))])
def test_a_bad_circuit_field_is_one_422_line_naming_it(http, path, fields, start, part):
    r = http.post(path, json={"trace": TRACE} | fields)
    message = r.json()["message"]
    assert r.status_code == 422 and "\n" not in message, r.text[:300]
    assert message.startswith(start) and part in message, message


def test_farm_query_sends_the_circuit(
    aware_url, recorded, sim_store, sample_circuit, tmp_path, capsys
):
    import json

    trace, fp = recorded
    np.save(tmp_path / "trace.npy", trace)
    np.save(tmp_path / "fp.npy", fp)
    base = ["query", "--url", aware_url, "--n", "20", "--seed", "2", "--json"]
    outs = []
    for extra in (["--circuit", "1:2"], ["--fingerprint", str(tmp_path / "fp.npy")]):
        code = main([*base, "--trace", str(tmp_path / "trace.npy"), *extra])
        out = capsys.readouterr()
        assert code == 0, out.err
        outs.append(json.loads(out.out))
    assert outs[0]["circuit"] == {"chip": 1, "neuron": 2} and outs[1]["circuit"] is None
    assert outs[0]["rows"] == outs[1]["rows"]  # the same fingerprint, by id or by value

    code = main([*base, "--store", str(sim_store), "--index", "0"])  # the sample's own circuit
    out = capsys.readouterr()
    chip, neuron = sample_circuit
    assert code == 0 and json.loads(out.out)["circuit"] == {"chip": chip, "neuron": neuron}, out.err

    for extra, expected in (
        ([], "--circuit CHIP:NEURON or --fingerprint FILE.npy (6x400"),
        (["--circuit", "1023:511"], "body.circuit: chip:neuron 1023:511"),
    ):
        code = main([*base, "--trace", str(tmp_path / "trace.npy"), *extra])
        err = capsys.readouterr().err.strip()
        assert code == 2 and expected in err and len(err.splitlines()) == 1, err


def test_the_python_client_takes_the_same_fields(aware_url, recorded):
    from deploy.client import PosteriorClient

    trace, fp = recorded
    with PosteriorClient(aware_url) as client:
        by_id = client.sample(trace, num_samples=10, seed=1, circuit=(1, 2))
        by_codes = client.sample(trace, num_samples=10, seed=1, fingerprint=fp)
        assert by_id["samples"] == by_codes["samples"]
        theta = np.asarray(by_id["samples"][:2])
        assert len(client.log_prob(theta, trace, circuit=(1, 2))["log_prob"]) == 2
        assert client.predictive(trace, 2, seed=1, circuit=(1, 2))["circuit"] == {
            "chip": 1,
            "neuron": 2,
        }


def test_farm_serve_checks_the_store_against_a_circuit_aware_posterior(
    aware_artifact, circuits_store, tmp_path, capsys
):
    from farm.circuits.references import ReferenceSet

    fewer = ReferenceSet(DEFAULT_REFERENCES.references[:3])
    other = write_circuits_store(
        tmp_path / "other.zarr", chips=(0,), neurons=(0,), references=fewer
    )
    for store, expected in (
        (other, "recorded at references"),
        (tmp_path / "none.zarr", "does not exist"),
    ):
        code = main(["serve", "--posterior", str(aware_artifact), "--circuits", str(store)])
        err = capsys.readouterr().err.strip()
        assert code == 2 and expected in err and "--circuits" in err, err
        assert len(err.splitlines()) == 1, err
