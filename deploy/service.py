"""The Ray Serve application that answers posterior queries over HTTP.

One deployment, ``PosteriorService``, with a FastAPI ingress. Each replica loads the artifact
written by ``farm train npe`` once in ``__init__`` (``inference.load_posterior``: no pickle) and
runs every torch call on one worker thread, so the event loop stays free to accept and queue
requests while a forward pass runs. Unseeded ``/sample`` requests that arrive while the replica is
busy are grouped by ``@serve.batch`` into one ``sample_and_log_prob`` call; a lone request on an idle
replica goes straight to the model. Seeded requests are answered one by one: their draws must not
depend on which other requests shared the batch.

Endpoints: GET /health, GET /info, POST /sample, POST /log_prob, POST /predictive
(docs/http-api.md). No request field takes a file path or a store URL: the artifact is fixed
when the application is deployed.
"""

# No `from __future__ import annotations` here: FastAPI reads the endpoint annotations at
# runtime through Serve's ingress wrapper, which cannot resolve string annotations.
import asyncio
import math
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Callable

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve.deployment import Application

from deploy.schemas import (
    ADC_MAX_CODE,
    MAX_NUM_SAMPLES,
    MAX_PREDICTIVE_SAMPLES,
    MAX_SEED,
    MAX_THETA_ROWS,
    HealthResponse,
    InfoResponse,
    LogProbRequest,
    LogProbResponse,
    Observation,
    ParameterInfo,
    PredictiveRequest,
    PredictiveResponse,
    SampleRequest,
    SampleResponse,
)
from deploy.summaries import summarize_draws

APP_NAME = "bss2-posterior"
DEFAULT_MAX_BATCH_SIZE = 16
DEFAULT_BATCH_WAIT_S = 0.005


def package_version() -> str:
    try:
        return version("bss2-farm")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
        return "0+unknown"


class RequestRejected(Exception):
    """A request that parsed but does not fit the served posterior (HTTP 422)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def _unprocessable(errors: list[dict[str, Any]]) -> JSONResponse:
    """422 body: pydantic-style ``detail`` plus a one-line ``message`` naming the first bad field."""
    first = errors[0]
    where = ".".join(str(p) for p in first["loc"])
    return JSONResponse(status_code=422, content={"detail": errors, "message": f"{where}: {first['msg']}"})


api = FastAPI(
    title="bss2-farm posterior",
    version=package_version(),
    description="Amortized posterior over the 7 AdEx CapMem parameters of a BrainScaleS-2 neuron.",
)


@api.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    # Drop the echoed `input` (a whole trace) and `ctx` (may hold exception objects).
    errors = [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))} for e in exc.errors()]
    return _unprocessable(errors or [{"loc": ["body"], "msg": "invalid request", "type": "value_error"}])


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    # FastAPI answers 400 for a body it cannot even decode (bytes that are no JSON text); that is
    # a malformed request like any other, so it gets the same 422 shape.
    if exc.status_code == 400:
        return _unprocessable([{"loc": ["body"], "msg": f"could not be decoded as JSON ({exc.detail})", "type": "json_invalid"}])
    return JSONResponse(status_code=exc.status_code, content={"detail": exc.detail, "message": str(exc.detail)}, headers=getattr(exc, "headers", None))


@api.exception_handler(RequestRejected)
async def _rejected(request: Request, exc: RequestRejected) -> JSONResponse:
    return _unprocessable([{"loc": ["body", exc.field], "msg": exc.message, "type": "value_error"}])


_BATCHED = {"trace": "traces", "features": "features"}  # request field -> batched keyword of the posterior


def significant_digits(values: np.ndarray, digits: int = 7) -> np.ndarray:
    """float64 values rounded to ``digits`` significant digits, so JSON carries ~8 characters each.

    The draws are float32 (~7.2 significant digits); written as float64 they take 17 digits and
    doubled the /sample body (130 kB for 1000 draws) for digits that are not there. The relative
    change is below 5e-7: a thousandth of an LSB at most.
    """
    a = np.asarray(values, dtype=np.float64)
    magnitude = np.floor(np.log10(np.abs(np.where(a == 0.0, 1.0, a))))
    scale = 10.0 ** (digits - 1 - magnitude)
    return np.rint(a * scale) / scale


def _json_response(body: BaseModel, started: float | None = None, drawn: float | None = None) -> Response:
    """The model serialised once by pydantic's Rust encoder, with a ``Server-Timing`` header.

    FastAPI's default path re-validates the returned model and runs ``json.dumps`` over it;
    for 1000 draws (7000 floats) that was ~3 ms of a ~20 ms request. The ``response_model`` on
    each route still documents the schema in /docs. ``Server-Timing`` (milliseconds in the
    replica: ``draws`` waiting for and running the model, ``replica`` the whole handler) lets a
    client tell network and proxy time from model time.
    """
    content = body.model_dump_json()
    headers = {}
    if started is not None:
        now = time.perf_counter()
        parts = ([f"draws;dur={1000 * (drawn - started):.2f}"] if drawn is not None else []) + [f"replica;dur={1000 * (now - started):.2f}"]
        headers["Server-Timing"] = ", ".join(parts)
    return Response(content=content, media_type="application/json", headers=headers)


@dataclass(frozen=True)
class _Job:
    """One unseeded /sample request waiting in the batcher."""

    num_samples: int
    observation: dict[str, np.ndarray]


class AppArgs(BaseModel):
    """Arguments of ``build_app`` (the ``args:`` block of deploy/serve_config.yaml)."""

    model_config = ConfigDict(extra="forbid")
    posterior: str = Field(description="artifact directory written by `farm train npe`")
    max_batch_size: int = Field(DEFAULT_MAX_BATCH_SIZE, ge=1, le=256)
    batch_wait_timeout_s: float = Field(DEFAULT_BATCH_WAIT_S, ge=0.0, le=1.0)
    torch_threads: int = Field(1, ge=1, le=64)


@serve.deployment(
    name="PosteriorService",
    ray_actor_options={"num_cpus": 0.5},
    max_ongoing_requests=64,
    health_check_period_s=2.0,
    graceful_shutdown_timeout_s=5.0,
    max_constructor_retry_count=3,
)
@serve.ingress(api)
class PosteriorService:
    """Serve replica holding one loaded posterior.

    Args:
        posterior: artifact directory from ``farm train npe`` (either variant).
        max_batch_size: most /sample requests grouped into one forward pass; 1 turns batching off.
        batch_wait_timeout_s: how long the batcher waits to fill a batch.
        torch_threads: torch intra-op threads of this replica.
    """

    def __init__(self, posterior: str, max_batch_size: int = DEFAULT_MAX_BATCH_SIZE, batch_wait_timeout_s: float = DEFAULT_BATCH_WAIT_S, torch_threads: int = 1) -> None:
        import torch

        from inference import load_posterior

        from threadpoolctl import threadpool_limits

        # One intra-op thread per replica: replicas hold 0.5 CPU, and oversubscribed torch threads
        # slow a loaded node down many times over. numpy's BLAS (the restricted prior's classifier)
        # too: its idle pool spinning beside torch's doubled the time of a 1000-draw /sample here.
        torch.set_num_threads(torch_threads)
        threadpool_limits(limits=torch_threads)
        self.posterior = load_posterior(posterior)
        self.replica = serve.get_replica_context().replica_id.unique_id
        self.names = list(self.posterior.parameter_names)
        self.batching = max_batch_size > 1
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="posterior")
        self._pending = 0  # /sample requests in this replica (touched only on the event loop)
        if self.batching:
            self._sample_batch.set_max_batch_size(max_batch_size)
            self._sample_batch.set_batch_wait_timeout_s(batch_wait_timeout_s)

    async def _run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a torch call on the replica's worker thread; its ValueErrors become 422s."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))
        except ValueError as e:
            raise RequestRejected("body", str(e).splitlines()[0] if str(e) else "rejected by the posterior") from None

    def _observation(self, req: Observation | PredictiveRequest) -> dict[str, np.ndarray]:
        """The request's trace or features as the numpy keyword the posterior takes."""
        if req.trace is not None:
            trace = np.asarray(req.trace, dtype=np.int16)
            if trace.shape[0] != self.posterior.trace_length:
                raise RequestRejected("trace", f"length {trace.shape[0]} differs from this posterior's trace length {self.posterior.trace_length}")
            return {"trace": trace}
        if getattr(req, "features", None) is None:
            raise RequestRejected("trace", "missing; give the trace (1000 ADC codes)")
        if not self.posterior.accepts_features:
            raise RequestRejected("features", f"this posterior ({self.posterior.variant}) takes `trace` only")
        features = np.asarray(req.features, dtype=np.float32)
        if features.shape[0] != len(self.posterior.feature_names):
            raise RequestRejected("features", f"length {features.shape[0]} differs from the {len(self.posterior.feature_names)} features {', '.join(self.posterior.feature_names)}")
        return {"features": features}

    def _draw(self, num_samples: int, observation: dict[str, np.ndarray], seed: int | None) -> tuple[np.ndarray, np.ndarray, int]:
        """Draws, their log-densities, and the number of requests that shared the forward pass (1)."""
        (keyword, value), = observation.items()
        samples, log_prob = self.posterior.sample_and_log_prob(num_samples, seed=seed, normalized=False, **{_BATCHED[keyword]: value[None]})
        return samples[0], log_prob[0], 1

    def _draw_batch(self, jobs: list[_Job]) -> list[tuple[np.ndarray, np.ndarray, int] | Exception]:
        """One flow pass per input kind (trace / features) for the whole batch.

        Densities come from the sampling pass and skip the restricted prior's leakage
        correction: /sample only uses them to pick the highest-density draw, and the
        correction is one constant per observation.
        """
        results: list[tuple[np.ndarray, np.ndarray, int] | Exception] = [ValueError("not computed")] * len(jobs)
        for kind, keyword in _BATCHED.items():
            idx = [i for i, j in enumerate(jobs) if kind in j.observation]
            if not idx:
                continue
            n_max = max(jobs[i].num_samples for i in idx)
            try:
                stacked = np.stack([jobs[i].observation[kind] for i in idx])
                draws, log_prob = self.posterior.sample_and_log_prob(n_max, normalized=False, **{keyword: stacked})
                for row, i in enumerate(idx):
                    n = jobs[i].num_samples
                    results[i] = (np.ascontiguousarray(draws[row, :n]), log_prob[row, :n], len(idx))
            except ValueError:
                for i in idx:  # isolate the bad request so the others are still answered
                    try:
                        results[i] = self._draw(jobs[i].num_samples, jobs[i].observation, None)
                    except ValueError as e:
                        results[i] = e
        return results

    @serve.batch(max_batch_size=DEFAULT_MAX_BATCH_SIZE, batch_wait_timeout_s=DEFAULT_BATCH_WAIT_S)
    async def _sample_batch(self, jobs: list[_Job]) -> list[tuple[np.ndarray, np.ndarray, int] | Exception]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._draw_batch, jobs)

    @api.get("/health", response_model=HealthResponse)
    def health(self) -> HealthResponse:
        from farm.defaults import EMULATOR_VERSION

        model = str(self.posterior.manifest.get("name", f"npe-{self.posterior.variant}"))
        return HealthResponse(status="ok", model=model, variant=self.posterior.variant, fingerprint=self.posterior.fingerprint, version=package_version(), emulator_version=EMULATOR_VERSION, replica=self.replica)

    @api.get("/info", response_model=InfoResponse)
    def info(self) -> InfoResponse:
        from farm.features import FEATURE_UNITS

        prior = self.posterior.prior
        params = [ParameterInfo(name=n, unit="LSB", low=float(lo), high=float(hi)) for n, lo, hi in zip(self.names, prior.low, prior.high)]
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
            feature_units={f: FEATURE_UNITS.get(f, "") for f in feats},
            limits={"max_num_samples": MAX_NUM_SAMPLES, "max_theta_rows": MAX_THETA_ROWS, "max_predictive_samples": MAX_PREDICTIVE_SAMPLES, "max_seed": MAX_SEED},
            protocol=self.posterior.protocol.to_dict(),
        )

    @api.post("/sample", response_model=SampleResponse)
    async def sample(self, req: SampleRequest) -> Response:
        started = time.perf_counter()
        observation = self._observation(req)
        self._pending += 1
        try:
            # A lone request on an idle replica skips the batcher (and its wait); requests that
            # arrive while the worker thread is busy queue there and share the next forward pass.
            if req.seed is not None or not self.batching or self._pending == 1:
                samples, log_prob, batch_size = await self._run(self._draw, req.num_samples, observation, req.seed)
            else:
                result = await self._sample_batch(_Job(req.num_samples, observation))
                if isinstance(result, Exception):
                    raise RequestRejected("body", str(result).splitlines()[0])
                samples, log_prob, batch_size = result
        finally:
            self._pending -= 1
        drawn = time.perf_counter()
        samples = significant_digits(samples)
        summary = summarize_draws(samples, log_prob)
        return _json_response(SampleResponse(
            parameter_names=self.names,
            num_samples=int(samples.shape[0]),
            seed=req.seed,
            samples=samples.tolist(),
            mean=summary["mean"].tolist(),
            std=summary["std"].tolist(),
            map=summary["map"].tolist(),
            fingerprint=self.posterior.fingerprint,
            batch_size=batch_size,
        ), started=started, drawn=drawn)

    @api.post("/log_prob", response_model=LogProbResponse)
    async def log_prob(self, req: LogProbRequest) -> Response:
        observation = self._observation(req)
        theta = np.asarray(req.theta, dtype=np.float64)
        try:
            self.posterior.prior.check(theta)
        except ValueError as e:
            raise RequestRejected("theta", str(e)) from None
        values = await self._run(self.posterior.log_prob, theta.astype(np.float32), **observation)
        return _json_response(LogProbResponse(parameter_names=self.names, log_prob=[float(v) if math.isfinite(v) else None for v in np.asarray(values, dtype=np.float64)], fingerprint=self.posterior.fingerprint))

    @api.post("/predictive", response_model=PredictiveResponse)
    async def predictive(self, req: PredictiveRequest) -> Response:
        from farm.features import FEATURE_NAMES, summarize
        from farm.simulate import simulate_theta

        observation = self._observation(req)
        seed = req.seed if req.seed is not None else secrets.randbelow(MAX_SEED + 1)

        def run() -> tuple[np.ndarray, Any, int]:
            theta = self.posterior.sample(req.num_samples, seed=seed, **observation)
            sims = simulate_theta(theta, seed=seed, protocol=self.posterior.protocol, chip_model=self.posterior.chip_model)
            observed = summarize(observation["trace"][None, :], self.posterior.protocol, self.posterior.chip_model)[0]
            return theta, sims, int(observed[FEATURE_NAMES.index("spike_count")])

        theta, sims, observed_count = await self._run(run)
        return _json_response(PredictiveResponse(
            parameter_names=self.names,
            seed=seed,
            theta=np.asarray(theta, dtype=np.float64).tolist(),
            traces=sims.trace.astype(int).tolist(),
            spike_count=sims.spike_count.astype(int).tolist(),
            observed_spike_count=observed_count,
            fingerprint=self.posterior.fingerprint,
        ))


def posterior_app(posterior: str, *, num_replicas: int | None = None, max_batch_size: int = DEFAULT_MAX_BATCH_SIZE, batch_wait_timeout_s: float = DEFAULT_BATCH_WAIT_S, num_cpus: float | None = None, torch_threads: int = 1) -> Application:
    """The Serve application for one posterior artifact, ready for ``serve.run``.

    Args:
        posterior: artifact directory (must be readable on every node that runs a replica).
        num_replicas: fixed replica count; None keeps the deployment default (1).
        max_batch_size: requests per forward pass; 1 turns batching off (for comparisons).
        batch_wait_timeout_s: how long a batch waits to fill.
        num_cpus: CPUs reserved per replica (default 0.5).
        torch_threads: torch intra-op threads per replica.

    Returns:
        A bound application; ``serve.run(app, name=APP_NAME, route_prefix="/")`` deploys it.
    """
    cfg = AppArgs(posterior=str(posterior), max_batch_size=max_batch_size, batch_wait_timeout_s=batch_wait_timeout_s, torch_threads=torch_threads)
    options: dict[str, Any] = {}
    if num_replicas is not None:
        if num_replicas < 1:
            raise ValueError(f"num_replicas={num_replicas} must be >= 1")
        options["num_replicas"] = num_replicas
    if num_cpus is not None:
        options["ray_actor_options"] = {"num_cpus": float(num_cpus)}
    deployment = PosteriorService.options(**options) if options else PosteriorService
    return deployment.bind(cfg.posterior, cfg.max_batch_size, cfg.batch_wait_timeout_s, cfg.torch_threads)


def build_app(args: dict[str, Any]) -> Application:
    """Application builder for ``serve run deploy/serve_config.yaml`` (``import_path: deploy.service:build_app``)."""
    cfg = AppArgs.model_validate(args)
    if Path(cfg.posterior).is_dir():  # a relative path means: relative to where `serve run` was started
        cfg = cfg.model_copy(update={"posterior": str(Path(cfg.posterior).resolve())})
    return PosteriorService.bind(cfg.posterior, cfg.max_batch_size, cfg.batch_wait_timeout_s, cfg.torch_threads)
