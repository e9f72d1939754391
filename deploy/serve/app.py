"""The Ray Serve application that answers posterior queries over HTTP.

One deployment, ``PosteriorService``, with a FastAPI ingress. Each replica loads the artifact
written by ``farm train npe`` once in ``__init__`` (``inference.load_posterior``: no pickle) and
runs every torch call on one worker thread, so the event loop stays free to accept and queue
requests while a forward pass runs. Which request goes next, and which one a full replica sheds,
is decided per client (``deploy.serve.fair_queue``: least recent usage first, so 48 heavy clients
cannot starve a light one). Unseeded ``/sample`` requests that wait together share one
``sample_and_log_prob`` call; a lone request on an idle replica goes straight to the model. Seeded
requests are answered one by one: their draws must not depend on which other requests shared the
pass. The model work itself (draws, batches, the per-observation misspecification check every
answer carries) lives in ``deploy.serve.model_calls``, the health probe in ``deploy.serve.health``.

Endpoints: GET /health, GET /info, POST /sample, POST /log_prob, POST /predictive
(docs/http-api.md). No request field takes a file path or a store URL: the artifact (and the
circuits store that `circuit` requests resolve through, ``deploy.serve.circuits``) is fixed
when the application is deployed. GET /openapi.json is the replica's own document, stating the
loaded artifact's limits (``deploy.serve.openapi``), and GET /docs renders it.
"""

# No `from __future__ import annotations` here: FastAPI reads the endpoint annotations at
# runtime through Serve's ingress wrapper, which cannot resolve string annotations.
import asyncio
import math
import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve.config import BackpressureConfig
from ray.serve.deployment import Application

from deploy.defaults import (
    DEFAULT_BATCH_WAIT_S,
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_MAX_MODEL_QUEUE,
    DEFAULT_REQUEST_TIMEOUT_S,
    MAX_ONGOING_REQUESTS,
    MAX_QUEUED_REQUESTS,
)
from deploy.serve.circuits import (
    CircuitTable,
    circuit_aware,
    fingerprint_shape,
    reference_names,
    resolve,
)
from deploy.serve.fair_queue import FairModelQueue, QueueFull
from deploy.serve.health import HealthMonitor, probe
from deploy.serve.http_errors import (
    DeadlineExceeded,
    RequestRejected,
    ServiceOverloaded,
    install_error_handlers,
    json_response,
    rejection,
)
from deploy.serve.limits import RETRY_AFTER_S, ContentLengthLimit
from deploy.serve.model_calls import Drawn, Job, assess, draw_batch, draw_one, refusing
from deploy.serve.observations import expected_shape, observation_trace
from deploy.serve.openapi import served_openapi
from deploy.serve.schemas import (
    ADC_MAX_CODE,
    ERROR_RESPONSES,
    MAX_BODY_BYTES,
    MAX_NUM_SAMPLES,
    MAX_PREDICTIVE_SAMPLES,
    MAX_SEED,
    MAX_THETA_ROWS,
    Circuit,
    CircuitsInfo,
    HealthResponse,
    InfoResponse,
    LogProbRequest,
    LogProbResponse,
    Misspecification,
    Observation,
    ParameterInfo,
    PredictiveRequest,
    PredictiveResponse,
    SampleRequest,
    SampleResponse,
)
from deploy.summaries import significant_digits, summarize_draws
from farm.versions import package_version
from inference.threads import torch_threads_kept

APP_NAME = "bss2-posterior"
#: A request's fixed model cost in draws (embedding, misspecification check), added to its own.
REQUEST_COST_DRAWS = 100
#: Header naming the client for fair queueing (a gateway can set it from an API key); else the
#: client's address.
CLIENT_HEADER = "x-client-id"


def client_of(request: Request) -> str:
    """Who asks: the ``X-Client-Id`` header (its first 128 characters), else the address."""
    named = request.headers.get(CLIENT_HEADER, "").strip()
    if named:
        return "id:" + named[:128]
    return "addr:" + (request.client.host if request.client is not None else "unknown")


def sample_response(
    names: list[str],
    fingerprint: str,
    result: Drawn,
    seed: int | None,
    started: float,
    drawn: float,
) -> Response:
    """The /sample answer for one request's draws.

    Above the class: ``serve.ingress`` snapshots the endpoints' globals.
    """
    samples, log_prob, batch_size, check = result
    samples = significant_digits(samples)
    summary = summarize_draws(samples, log_prob)
    return json_response(
        # Fields built here from typed arrays: validating 7000 floats again cost ~0.3 ms.
        SampleResponse.model_construct(
            parameter_names=names,
            num_samples=int(samples.shape[0]),
            seed=seed,
            samples=samples.tolist(),
            mean=summary["mean"].tolist(),
            std=summary["std"].tolist(),
            map=summary["map"].tolist(),
            fingerprint=fingerprint,
            batch_size=batch_size,
            misspecification=Misspecification(**check),
        ),
        started=started,
        drawn=drawn,
    )


api = FastAPI(
    title="bss2-farm posterior",
    version=package_version(),
    description="Amortized posterior over the 7 AdEx CapMem parameters of a BrainScaleS-2 neuron.",
    # Each replica serves its own document with the loaded artifact's limits (deploy.serve.openapi).
    openapi_url=None,
    docs_url=None,
    redoc_url=None,
)
install_error_handlers(api)
api.add_middleware(
    ContentLengthLimit, max_body_bytes=MAX_BODY_BYTES, count_stream=True
)  # 413 before the body is read


class AppArgs(BaseModel):
    """Arguments of ``build_app`` (the ``args:`` block of deploy/serve_config.yaml)."""

    model_config = ConfigDict(extra="forbid")
    posterior: str = Field(description="artifact directory written by `farm train npe`")
    max_batch_size: int = Field(DEFAULT_MAX_BATCH_SIZE, ge=1, le=256)
    batch_wait_timeout_s: float = Field(DEFAULT_BATCH_WAIT_S, ge=0.0, le=1.0)
    torch_threads: int = Field(1, ge=1, le=64)
    max_model_queue: int = Field(DEFAULT_MAX_MODEL_QUEUE, ge=1, le=MAX_ONGOING_REQUESTS - 4)
    request_timeout_s: float = Field(DEFAULT_REQUEST_TIMEOUT_S, gt=0.0, le=600.0)
    circuits: str | None = Field(
        None,
        description="circuits store of `farm fingerprint` that `circuit` requests resolve "
        "through (circuit-aware posteriors only)",
    )


@serve.deployment(
    name="PosteriorService",
    ray_actor_options={"num_cpus": 0.5},
    max_ongoing_requests=MAX_ONGOING_REQUESTS,
    max_queued_requests=MAX_QUEUED_REQUESTS,
    backpressure_config=BackpressureConfig(status_code=503, retry_after_s=RETRY_AFTER_S),
    health_check_period_s=2.0,
    health_check_timeout_s=10.0,
    graceful_shutdown_timeout_s=5.0,
    max_constructor_retry_count=3,
)
@serve.ingress(api)
class PosteriorService:
    """Serve replica holding one loaded posterior.

    Args:
        posterior: artifact directory from ``farm train npe`` (either variant).
        max_batch_size: most /sample requests grouped into one forward pass; 1 turns batching off.
        batch_wait_timeout_s: under load, how long a /sample request waits for others to share its
            pass.
        torch_threads: torch intra-op threads of this replica.
        max_model_queue: model-bound requests held at once; one more is answered 503 + Retry-After.
        request_timeout_s: a request still waiting for the model after this long is answered 504.
        circuits: circuits store (``farm fingerprint``) that `circuit` requests resolve through;
            read once here, and refused unless its references are the posterior's.
    """

    def __init__(
        self,
        posterior: str,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        batch_wait_timeout_s: float = DEFAULT_BATCH_WAIT_S,
        torch_threads: int = 1,
        max_model_queue: int = DEFAULT_MAX_MODEL_QUEUE,
        request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
        circuits: str | None = None,
    ) -> None:
        import torch
        from threadpoolctl import threadpool_limits

        from inference import load_posterior

        # One intra-op thread per replica: replicas hold 0.5 CPU, and oversubscribed torch threads
        # slow a loaded node down many times over. numpy's BLAS (the restricted prior's classifier)
        # too: its idle pool spinning beside torch's doubled the time of a 1000-draw /sample here.
        torch.set_num_threads(torch_threads)
        threadpool_limits(limits=torch_threads)
        self.posterior = load_posterior(posterior)
        # A store of other references, or one given to a circuit-marginal posterior, fails here.
        self.circuits = None if circuits is None else CircuitTable.load(circuits, self.posterior)
        self.replica = serve.get_replica_context().replica_id.unique_id
        self.names = list(self.posterior.parameter_names)
        self.request_timeout_s = request_timeout_s
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="posterior")
        probe_fingerprint = (
            None if self.circuits is None else self.circuits.codes[0, 0]
        )  # a recorded circuit where there is one: a flat fingerprint is far from any training one
        self._health = HealthMonitor(
            self.posterior, self._executor, request_timeout_s, fingerprint=probe_fingerprint
        )
        probe(
            self.posterior, probe_fingerprint
        )  # a model that cannot answer fails the constructor, not the first user
        self._openapi = served_openapi(api, self.posterior, self.circuits)
        self._queue = FairModelQueue(
            capacity=max_model_queue,
            run=self._on_model_thread,
            run_batch=lambda jobs: self._on_model_thread(lambda: draw_batch(self.posterior, jobs)),
            max_batch_size=max_batch_size,
            batch_wait_s=batch_wait_timeout_s,
        )

    def _on_model_thread(self, fn: Callable[[], Any]) -> "asyncio.Future[Any]":
        return asyncio.wrap_future(self._executor.submit(self._health.timed, fn))

    async def _model(
        self,
        request: Request,
        cost: float,
        *,
        call: Callable[[], Any] | None = None,
        job: Job | None = None,
    ) -> Any:
        """Queue one model-bound request for its client's turn.

        503 when shed, 504 past the deadline, 422 on a ValueError.

        Args:
            request: the HTTP request (its ``X-Client-Id`` header or address names the client).
            cost: draws (or rows) it asks of the model: the client's usage grows by it.
            call: model work that runs alone, or
            job: an unseeded /sample that may share a pass.
        """
        try:
            entry = self._queue.submit(
                client_of(request),
                cost,
                call=call,
                batch=None if job is None else (job.num_samples, job),
            )
        except QueueFull as e:
            raise ServiceOverloaded(f"{e}; retry after {RETRY_AFTER_S} s") from None
        try:
            return await asyncio.wait_for(entry.future, timeout=self.request_timeout_s)
        except TimeoutError:
            raise DeadlineExceeded(
                f"request_timeout_s: no answer from the model within "
                f"{self.request_timeout_s:g} s; retry later"
            ) from None
        except QueueFull as e:
            raise ServiceOverloaded(f"{e}; retry after {RETRY_AFTER_S} s") from None
        except ValueError as e:
            raise rejection(e) from None
        finally:  # past its deadline, or the client went away: a request not yet started never runs
            self._queue.withdraw(entry)

    async def check_health(self) -> None:
        """Serve's health probe (deploy.serve.health): unhealthy on a hung call or a failed draw."""
        await self._health.check(len(self._queue))

    def _observation(self, req: Observation | PredictiveRequest) -> dict[str, np.ndarray]:
        """The request's observation as the posterior's numpy keywords.

        Its trace or features, and for a circuit-aware posterior its circuit's ``fingerprint``
        (sent, or looked up by ``circuit``; ``deploy.serve.circuits.resolve``).
        """
        measured = self._measurement(req)
        circuit = resolve(self.posterior, self.circuits, req.fingerprint, req.circuit)
        return measured | circuit.keywords

    def _measurement(self, req: Observation | PredictiveRequest) -> dict[str, np.ndarray]:
        """The request's trace or features as the numpy keyword the posterior takes."""
        if req.trace is not None:
            return {
                "trace": observation_trace(
                    req.trace, self.posterior.protocol, self.posterior.trace_length
                )
            }
        shape = (self.posterior.protocol, self.posterior.trace_length)
        if getattr(req, "features", None) is None:
            raise RequestRejected(
                "trace",
                f"missing; give the trace ({expected_shape(*shape)} ADC codes)",
            )
        if not self.posterior.accepts_features:
            raise RequestRejected(
                "features", f"this posterior ({self.posterior.variant}) takes `trace` only"
            )
        features = np.asarray(req.features, dtype=np.float32)
        if features.shape[0] != len(self.posterior.feature_names):
            raise RequestRejected(
                "features",
                f"length {features.shape[0]} differs from the "
                f"{len(self.posterior.feature_names)} features "
                f"{', '.join(self.posterior.feature_names)}",
            )
        return {"features": features}

    @api.get("/openapi.json", include_in_schema=False)
    def openapi(self) -> JSONResponse:
        return JSONResponse(self._openapi)

    @api.get("/docs", include_in_schema=False)
    def docs(self, request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(openapi_url=f"{root}/openapi.json", title=f"{api.title} - docs")

    @api.get("/health", response_model=HealthResponse)
    def health(self) -> HealthResponse | JSONResponse:
        from farm.defaults import EMULATOR_VERSION

        if (
            unhealthy := self._health.answer(self.replica)
        ) is not None:  # what check_health found; Serve replaces the replica
            return JSONResponse(status_code=503, content=unhealthy)

        model = str(self.posterior.manifest.get("name", f"npe-{self.posterior.variant}"))
        return HealthResponse(
            status="ok",
            model=model,
            variant=self.posterior.variant,
            fingerprint=self.posterior.fingerprint,
            version=package_version(),
            emulator_version=EMULATOR_VERSION,
            replica=self.replica,
            protocol=self.posterior.protocol.label,
        )

    @api.get("/info", response_model=InfoResponse)
    def info(self) -> InfoResponse:
        from farm.features import feature_units

        prior = self.posterior.prior
        params = [
            ParameterInfo(name=n, unit="LSB", low=float(lo), high=float(hi))
            for n, lo, hi in zip(self.names, prior.low, prior.high)
        ]
        feats = list(self.posterior.feature_names) if self.posterior.accepts_features else []
        return InfoResponse(
            variant=self.posterior.variant,
            fingerprint=self.posterior.fingerprint,
            parameters=params,
            prior=prior.to_dict(),
            trace_length=int(self.posterior.trace_length),
            adc_max_code=ADC_MAX_CODE,
            accepts_features=bool(self.posterior.accepts_features),
            feature_names=feats,
            feature_units={f: feature_units(self.posterior.protocol).get(f, "") for f in feats},
            limits={
                "max_num_samples": MAX_NUM_SAMPLES,
                "max_theta_rows": MAX_THETA_ROWS,
                "max_predictive_samples": MAX_PREDICTIVE_SAMPLES,
                "max_seed": MAX_SEED,
            },
            protocol=self.posterior.protocol.to_dict(),
            protocol_name=self.posterior.protocol.label,
            observation_shape=list(self.posterior.protocol.observation_shape),
            circuit_aware=circuit_aware(self.posterior),
            fingerprint_shape=(
                None if (shape := fingerprint_shape(self.posterior)) is None else list(shape)
            ),
            fingerprint_references=reference_names(self.posterior),
            circuits=None if self.circuits is None else CircuitsInfo(**self.circuits.describe()),
        )

    @api.post("/sample", response_model=SampleResponse, responses=ERROR_RESPONSES)
    async def sample(self, req: SampleRequest, request: Request) -> Response:
        started = time.perf_counter()
        observation = self._observation(req)
        cost = REQUEST_COST_DRAWS + req.num_samples
        if (
            req.seed is not None
        ):  # seeded draws must not depend on which requests shared the pass: alone
            result: Drawn = await self._model(
                request,
                cost,
                call=lambda: draw_one(self.posterior, req.num_samples, observation, req.seed),
            )
        else:
            result = await self._model(request, cost, job=Job(req.num_samples, observation))
        return sample_response(
            self.names, self.posterior.fingerprint, result, req.seed, started, time.perf_counter()
        )

    @api.post("/log_prob", response_model=LogProbResponse, responses=ERROR_RESPONSES)
    async def log_prob(self, req: LogProbRequest, request: Request) -> Response:
        observation = self._observation(req)
        theta = np.asarray(req.theta, dtype=np.float64)
        try:
            self.posterior.prior.check(theta)
        except ValueError as e:
            raise RequestRejected("theta", str(e)) from None
        values, check = await self._model(
            request,
            REQUEST_COST_DRAWS + len(theta),
            call=lambda: (
                self.posterior.log_prob(theta.astype(np.float32), **observation),
                assess(self.posterior, observation),
            ),
        )
        return json_response(
            LogProbResponse(
                parameter_names=self.names,
                log_prob=[
                    float(v) if math.isfinite(v) else None
                    for v in np.asarray(values, dtype=np.float64)
                ],
                fingerprint=self.posterior.fingerprint,
                misspecification=Misspecification(**check),
            )
        )

    @api.post("/predictive", response_model=PredictiveResponse, responses=ERROR_RESPONSES)
    async def predictive(self, req: PredictiveRequest, request: Request) -> Response:
        from farm.features import spike_count_column, summarize
        from farm.simulate import simulate_theta

        observation = self._observation(req)
        # With `circuit`, every draw is simulated on the observation's own circuit: the check that
        # shows whether the parameters fit this neuron, not a typical one (issue 25).
        own = None if req.circuit is None else (req.circuit.chip, req.circuit.neuron)
        seed = req.seed if req.seed is not None else secrets.randbelow(MAX_SEED + 1)

        def run() -> tuple[np.ndarray, Any, int, dict[str, Any]]:
            theta = refusing(
                self.posterior,
                observation,
                lambda: self.posterior.sample(req.num_samples, seed=seed, **observation),
            )
            with (
                torch_threads_kept()
            ):  # the emulator's numba launch would leave this thread's torch on every core
                sims = simulate_theta(
                    theta,
                    seed=seed,
                    protocol=self.posterior.protocol,
                    chip_model=self.posterior.chip_model,
                    **({} if own is None else {"chip": own[0], "neuron": own[1]}),
                )
                observed = summarize(
                    observation["trace"][None, :],
                    self.posterior.protocol,
                    self.posterior.chip_model,
                )[0]
            return (
                theta,
                sims,
                int(observed[spike_count_column(self.posterior.protocol)]),
                assess(self.posterior, observation),
            )

        theta, sims, observed_count, check = await self._model(
            request, REQUEST_COST_DRAWS + req.num_samples, call=run
        )
        return json_response(
            PredictiveResponse(
                parameter_names=self.names,
                seed=seed,
                theta=np.asarray(theta, dtype=np.float64).tolist(),
                traces=sims.trace.astype(int).tolist(),
                spike_count=sims.spike_count.astype(int).tolist(),
                observed_spike_count=observed_count,
                circuit=None if own is None else Circuit(chip=own[0], neuron=own[1]),
                fingerprint=self.posterior.fingerprint,
                misspecification=Misspecification(**check),
            )
        )


def posterior_app(
    posterior: str,
    *,
    num_replicas: int | None = None,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    batch_wait_timeout_s: float = DEFAULT_BATCH_WAIT_S,
    num_cpus: float | None = None,
    torch_threads: int = 1,
    max_model_queue: int = DEFAULT_MAX_MODEL_QUEUE,
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
    circuits: str | None = None,
) -> Application:
    """The Serve application for one posterior artifact, ready for ``serve.run``.

    Args:
        posterior: artifact directory (must be readable on every node that runs a replica).
        num_replicas: fixed replica count; None keeps the deployment default (1).
        max_batch_size: requests per forward pass; 1 turns batching off (for comparisons).
        batch_wait_timeout_s: how long a batch waits to fill.
        num_cpus: CPUs reserved per replica (default 0.5).
        torch_threads: torch intra-op threads per replica.
        max_model_queue: model-bound requests per replica before 503 + Retry-After.
        request_timeout_s: per-request deadline in the replica (504 past it).
        circuits: circuits store that `circuit` requests resolve through (readable on every node
            that runs a replica); circuit-aware posteriors only.

    Returns:
        A bound application; ``serve.run(app, name=APP_NAME, route_prefix="/")`` deploys it.
    """
    cfg = AppArgs(
        posterior=str(posterior),
        max_batch_size=max_batch_size,
        batch_wait_timeout_s=batch_wait_timeout_s,
        torch_threads=torch_threads,
        max_model_queue=max_model_queue,
        request_timeout_s=request_timeout_s,
        circuits=None if circuits is None else str(circuits),
    )
    options: dict[str, Any] = {}
    if num_replicas is not None:
        if num_replicas < 1:
            raise ValueError(f"num_replicas={num_replicas} must be >= 1")
        options["num_replicas"] = num_replicas
    if num_cpus is not None:
        options["ray_actor_options"] = {"num_cpus": float(num_cpus)}
    deployment = PosteriorService.options(**options) if options else PosteriorService
    return deployment.bind(**cfg.model_dump())


def build_app(args: dict[str, Any]) -> Application:
    """Application builder for ``serve run deploy/serve_config.yaml``.

    The config names it as ``import_path: deploy.serve.app:build_app``.
    """
    cfg = AppArgs.model_validate(args)
    if Path(
        cfg.posterior
    ).is_dir():  # a relative path means: relative to where `serve run` was started
        cfg = cfg.model_copy(update={"posterior": str(Path(cfg.posterior).resolve())})
    if cfg.circuits is not None and Path(cfg.circuits).is_dir():
        cfg = cfg.model_copy(update={"circuits": str(Path(cfg.circuits).resolve())})
    return PosteriorService.bind(**cfg.model_dump())
