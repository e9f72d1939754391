"""Where one `/sample` request's time goes, stage by stage.

The stages: parse, summary, flow, rejection + classifier, check, response, HTTP.

Why a module of its own: bench/serve.py measures end-to-end latencies; this measures the parts in
the benchmark process on one thread with ``time.thread_time`` (CPU seconds of this thread), so a
busy machine (other jobs on the same cores) changes the figures far less than wall-clock ratios.
Stages run interleaved, ``reps`` times each, and medians are reported. The model-thread stages call
the same functions a replica calls (``deploy.serve.model_calls.draw_batch``,
``deploy.serve.app.sample_response``).

How the restricted prior's share is measured: the same ``draw_batch`` runs with rejection switched
off on the posterior (the flow then draws exactly ``num_samples`` rows, as for a box prior); the
difference is what rejection adds (the extra rows it draws, further flow rounds, the classifier,
the bookkeeping). The classifier's own time and the candidates per accepted draw are counted by
wrapping ``prior.support`` (one call per rejection round).
"""

from __future__ import annotations

import contextlib
import json
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np


class _CountingSupport:
    """``prior.support`` that also adds up its CPU time, its calls and the candidates it judged."""

    def __init__(self, support: Callable[[np.ndarray], np.ndarray]) -> None:
        self.support, self.seconds, self.calls, self.candidates = support, 0.0, 0, 0

    def __call__(self, theta: np.ndarray) -> np.ndarray:
        t0 = time.thread_time()
        ok = self.support(theta)
        self.seconds += time.thread_time() - t0
        self.calls += 1
        self.candidates += len(ok)
        return ok


@contextlib.contextmanager
def _rejection_off(posterior: Any) -> Iterator[None]:
    """The posterior draws as if its prior had no region to reject (box-prior cost, same flow)."""
    restricted = posterior._restricted  # bench-only: the counterfactual needs the private switch
    posterior._restricted = False
    try:
        yield
    finally:
        posterior._restricted = restricted


def request_split(
    posterior: Any, trace: np.ndarray, num_samples: int, reps: int = 20
) -> dict[str, Any]:
    """CPU milliseconds (median of ``reps``) of each stage of one unseeded /sample request.

    Measured in this thread.

    Returns:
        ``{stage: ms}`` plus ``candidates_per_draw``, ``rounds_per_request`` and ``classifier_ms``
        (restricted priors only; zeros otherwise).
    """
    from deploy.serve.app import sample_response
    from deploy.serve.model_calls import Job, draw_batch
    from deploy.serve.observations import observation_trace
    from deploy.serve.schemas import SampleRequest
    from farm.features import summarize
    from inference.threads import torch_threads_kept

    body = json.dumps({"trace": trace.tolist(), "num_samples": num_samples}).encode()
    names, fingerprint = list(posterior.parameter_names), posterior.fingerprint
    restricted = hasattr(posterior.prior, "threshold_logit")
    counter = _CountingSupport(posterior.prior.support)
    stages: dict[str, list[float]] = {}

    def timed(name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        t0 = time.thread_time()
        out = fn(*args, **kwargs)
        stages.setdefault(name, []).append(time.thread_time() - t0)
        return out

    if restricted:
        posterior.prior.support = counter  # an instance attribute shadows the method; removed below
    try:
        draw_batch(posterior, [Job(num_samples, {"trace": trace})])  # warm-up (numba, allocator)
        counter.seconds, counter.calls, counter.candidates = 0.0, 0, 0
        for _ in range(reps):
            req = timed(
                "parse + validate body", lambda b: SampleRequest.model_validate(json.loads(b)), body
            )
            obs = timed(
                "observation check",
                observation_trace,
                req.trace,
                posterior.protocol,
                posterior.trace_length,
            )
            job = Job(num_samples, {"trace": obs})
            if posterior.accepts_features:
                with (
                    torch_threads_kept()
                ):  # numba's OpenMP launch would leave this thread's torch on every core
                    timed(
                        "summary (handcrafted features)",
                        summarize,
                        obs[None],
                        posterior.protocol,
                        posterior.chip_model,
                    )
            timed("misspecification check", posterior.misspecification_batched, traces=obs[None])
            with _rejection_off(posterior):
                timed("model thread, rejection off", draw_batch, posterior, [job])
            (drawn,) = timed("model thread", draw_batch, posterior, [job])
            timed(
                "response: digits, summaries, JSON",
                sample_response,
                names,
                fingerprint,
                drawn,
                None,
                time.perf_counter(),
                time.perf_counter(),
            )
    finally:
        if restricted:
            del posterior.prior.support
    ms = {k: 1000 * statistics.median(v) for k, v in stages.items()}
    # Paired per repetition (the two calls run back to back), so a load change between reps cancels.
    ms["rejection + classifier"] = 1000 * statistics.median(
        a - b for a, b in zip(stages["model thread"], stages["model thread, rejection off"])
    )
    calls = max(counter.calls, 1)
    return ms | {
        "classifier_ms": 1000 * counter.seconds / reps,
        "candidates_per_draw": counter.candidates / (reps * num_samples) if restricted else 1.0,
        "rounds_per_request": counter.calls / reps if restricted else 1.0,
        "classifier_ms_per_round": 1000 * counter.seconds / calls,
    }


def print_split(
    split: dict[str, Any],
    http_p50_ms: float,
    replica_p50_ms: float,
    outside_p50_ms: float,
    library_p50_ms: float,
) -> None:
    """The split as a table: CPU ms in this process, then wall ms of the HTTP request around it."""
    rows = [
        (
            "parse + validate body (FastAPI does this before the handler)",
            split["parse + validate body"],
        ),
        ("observation check", split["observation check"]),
        (
            "model thread, rejection off (summary, embedding, flow, check)",
            split["model thread, rejection off"],
        ),
        (
            "  summary alone (handcrafted features)",
            split.get("summary (handcrafted features)", 0.0),
        ),
        ("  misspecification check alone (own summary + kNN)", split["misspecification check"]),
        (
            "rejection + classifier (what the restricted prior adds)",
            split["rejection + classifier"],
        ),
        ("  of which the classifier", split["classifier_ms"]),
        ("response: digits, mean/std/MAP, JSON", split["response: digits, summaries, JSON"]),
    ]
    print("  split of one /sample request (CPU ms on one thread in this process, median):")
    for name, value in rows:
        print(
            f"    {name:62s} {value:7.1f} ms  ({100 * value / http_p50_ms:4.1f} % of the HTTP p50)"
        )
    print(
        f"    rejection: {split['candidates_per_draw']:.3f} candidates per accepted draw, "
        f"{split['rounds_per_request']:.2f} flow rounds per request, "
        f"classifier {split['classifier_ms_per_round']:.1f} ms per round"
    )
    share = split["rejection + classifier"]
    print(
        f"    rejection + classifier: {100 * share / split['model thread']:.1f} % of the model "
        f"thread, {100 * share / http_p50_ms:.1f} % of the HTTP p50 (aim <= 20 %)"
    )
    print(
        f"  wall, unbatched app: HTTP p50 {http_p50_ms:.1f} ms = "
        f"replica handler {replica_p50_ms:.1f} ms (Server-Timing) + "
        f"outside it {outside_p50_ms:.1f} ms "
        f"(proxy hop, HTTP, body parsing); library p50 {library_p50_ms:.1f} ms"
    )
