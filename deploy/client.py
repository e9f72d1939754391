"""Client side of the posterior service: the implementation of ``farm query``.

The client reads the observation locally (a ``.npy`` trace, or sample ``i`` of a store) and sends
the trace itself: the HTTP API never takes a path, so a server cannot be made to read files. For a
circuit-aware posterior it also sends the circuit: its fingerprint (a ``.npy`` of ``farm
fingerprint``'s (references, time) codes) or its ids, which the service looks up in its own
circuits store (``farm serve --circuits``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np
from numpy.typing import NDArray

from deploy.summaries import central_interval
from farm.store.user_arrays import read_numbers


class QueryError(Exception):
    """The service refused a request or could not be reached.

    Args:
        message: the service's one-line ``message``.
        status: 422 for bad input or a refused observation, 0 when there was no answer.
        misspecification: on a 422 that refuses the observation itself (the posterior could give
            no draws), the service's check of it: the same object an answer carries.
    """

    def __init__(
        self, message: str, status: int = 0, misspecification: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.misspecification = misspecification


class PosteriorClient:
    """Keep-alive HTTP client of one posterior service.

    Args:
        url: base URL printed by ``farm serve`` (e.g. http://127.0.0.1:8000).
        timeout_s: per-request timeout.
    """

    def __init__(self, url: str, timeout_s: float = 60.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"url={url!r} must start with http:// or https://")
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, timeout=timeout_s)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> PosteriorClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        try:
            r = self._http.request(method, path, json=body)
        except httpx.HTTPError as e:
            raise QueryError(
                f"cannot reach {self.url}{path}: {type(e).__name__} {e}".strip()
            ) from None
        if r.status_code == 422:
            body = r.json()
            raise QueryError(
                body.get("message", r.text),
                status=422,
                misspecification=body.get("misspecification"),
            )
        if r.status_code != 200:
            raise QueryError(
                f"{self.url}{path} answered HTTP {r.status_code}: {r.text[:200]}",
                status=r.status_code,
            )
        return r.json()

    def health(self) -> dict[str, Any]:
        return self._call("GET", "/health")

    def info(self) -> dict[str, Any]:
        return self._call("GET", "/info")

    def sample(
        self,
        trace: NDArray[np.integer],
        num_samples: int = 1000,
        seed: int | None = None,
        *,
        fingerprint: NDArray[np.integer] | None = None,
        circuit: tuple[int, int] | None = None,
    ) -> dict[str, Any]:
        """POST /sample: ``num_samples`` draws for one trace.

        Args:
            trace: the observation's ADC codes.
            fingerprint: (references, time) codes of the observation's circuit (circuit-aware
                posteriors), or
            circuit: its (chip, neuron), looked up in the service's circuits store.
        """
        body = observation_body(trace, fingerprint, circuit) | {"num_samples": int(num_samples)}
        if seed is not None:
            body["seed"] = int(seed)
        return self._call("POST", "/sample", body)

    def log_prob(
        self,
        theta: NDArray[np.floating],
        trace: NDArray[np.integer],
        *,
        fingerprint: NDArray[np.integer] | None = None,
        circuit: tuple[int, int] | None = None,
    ) -> dict[str, Any]:
        """POST /log_prob: log q(theta | x) per row of ``theta`` (m, 7), CapMem LSB."""
        rows = np.atleast_2d(np.asarray(theta, dtype=np.float64)).tolist()
        body = observation_body(trace, fingerprint, circuit) | {"theta": rows}
        return self._call("POST", "/log_prob", body)

    def predictive(
        self,
        trace: NDArray[np.integer],
        num_samples: int = 10,
        seed: int | None = None,
        *,
        fingerprint: NDArray[np.integer] | None = None,
        circuit: tuple[int, int] | None = None,
    ) -> dict[str, Any]:
        """POST /predictive: draws simulated on the emulator (on ``circuit`` when it is given)."""
        body = observation_body(trace, fingerprint, circuit) | {"num_samples": int(num_samples)}
        if seed is not None:
            body["seed"] = int(seed)
        return self._call("POST", "/predictive", body)


def observation_body(
    trace: NDArray[np.integer],
    fingerprint: NDArray[np.integer] | None = None,
    circuit: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """The request fields of one observation: its trace, and its circuit if given.

    Raises:
        ValueError: both ``fingerprint`` and ``circuit`` (the service takes exactly one).
    """
    if fingerprint is not None and circuit is not None:
        raise ValueError("give at most one of fingerprint= or circuit=")
    body: dict[str, Any] = {"trace": np.asarray(trace).astype(int).tolist()}
    if fingerprint is not None:
        body["fingerprint"] = np.asarray(fingerprint).astype(int).tolist()
    if circuit is not None:
        chip, neuron = circuit
        body["circuit"] = {"chip": int(chip), "neuron": int(neuron)}
    return body


def load_trace_file(path: str | Path) -> NDArray[np.int16]:
    """A recorded observation from ``.npy`` (no pickle) or ``.csv``/``.txt``.

    (T,) or (1, T) ADC codes, or (sweeps, T) for a multi-sweep protocol (one row per sweep); the
    service checks the shape against its protocol.
    """
    p = Path(path)
    arr = read_numbers(p, "trace")
    if arr.ndim == 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim not in (1, 2) or arr.size == 0:
        raise ValueError(
            f"{p.name}: shape {arr.shape} is not one observation; "
            "expected (T,) ADC codes (1000 for the step protocol) or (sweeps, T)"
        )
    return _whole_codes(arr, p.name, "trace")


def _whole_codes(arr: NDArray[Any], name: str, what: str) -> NDArray[np.int16]:
    """``arr`` as int16 once every value is a whole ADC code; one line naming the file if not."""
    if not np.issubdtype(arr.dtype, np.number) or not np.all(np.isfinite(arr)):
        raise ValueError(
            f"{name}: {what} contains NaN, inf or non-numbers; expected ADC codes 0..1023"
        )
    if np.any(arr != np.round(arr)) or arr.min() < 0 or arr.max() > 1023:
        raise ValueError(
            f"{name}: values must be whole ADC codes in [0, 1023], "
            f"got range [{arr.min():g}, {arr.max():g}]"
        )
    return arr.astype(np.int16)


def load_fingerprint_file(path: str | Path) -> NDArray[np.int16]:
    """A circuit's fingerprint from ``.npy`` (no pickle) or ``.csv``/``.txt``: (references, time).

    The service checks the shape against the posterior's (e.g. (6, 400)); here only that it is
    one 2-D array of whole ADC codes. Save one from a circuits store with
    ``np.save(f, open_fingerprints(s).fingerprint.sel(chip=C, neuron=N).values)``.
    """
    p = Path(path)
    arr = read_numbers(p, "fingerprint")
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(
            f"{p.name}: shape {arr.shape} is not one fingerprint; expected (references, time) "
            "ADC codes, e.g. (6, 400), as `farm fingerprint` records them"
        )
    return _whole_codes(arr, p.name, "fingerprint")


def load_store_circuit(store: str, index: int) -> tuple[int, int]:
    """The (chip, neuron) that sample ``index`` of a farm store ran on."""
    from farm.store.sim_store import open_dataset

    row = open_dataset(store).isel(sample=index)
    return int(row["chip"].values), int(row["neuron"].values)


def load_store_trace(store: str, index: int) -> tuple[NDArray[np.int16], NDArray[np.float32]]:
    """Trace and true parameters of sample ``index`` of a farm store (local path or fsspec URL)."""
    from farm.store.sim_store import open_dataset

    ds = open_dataset(store)
    n = int(ds.sizes["sample"])
    if not 0 <= index < n:
        raise ValueError(
            f"index={index} outside [0, {n - 1}] of the {n} completed samples in {store}"
        )
    row = ds.isel(sample=index)
    return np.asarray(row["trace"].values, dtype=np.int16), np.asarray(
        row["theta"].values, dtype=np.float32
    )


def misspecification_warning(result: dict[str, Any]) -> str | None:
    """One warning line if the service flagged the observation as unlike the training data, or None.

    Args:
        result: a /sample, /log_prob or /predictive answer (older services without the
            ``misspecification`` object give None).
    """
    check = result.get("misspecification") or {}
    if not check.get("flagged"):
        return None
    reasons = "; ".join(check.get("reasons") or []) or "no reason given"
    return f"warning: observation unlike the training data: {reasons}"


def refusal_line(error: QueryError) -> str:
    """The one line ``farm query`` prints for a 422: the service's message and, for a refused
    observation (its ``misspecification`` object), the check's reasons, so a refusal explains
    itself on stderr as a flagged answer's warning does."""
    line = f"the service rejected the observation: {error}"
    check = error.misspecification or {}
    if check.get("reasons"):
        line += f" (misspecification: {'; '.join(check['reasons'])})"
    return line


def summary_rows(
    result: dict[str, Any], truth: NDArray[np.floating] | None = None, level: float = 0.9
) -> list[dict[str, Any]]:
    """One row per parameter: mean, std, equal-tailed ``level`` interval, MAP (and true value)."""
    samples = np.asarray(result["samples"], dtype=np.float64)
    lower, upper = central_interval(samples, level)
    rows = []
    for k, name in enumerate(result["parameter_names"]):
        row = {
            "parameter": name,
            "mean": result["mean"][k],
            "std": result["std"][k],
            "lower": float(lower[k]),
            "upper": float(upper[k]),
            "map": result["map"][k],
        }
        if truth is not None:
            row["true"] = float(truth[k])
        rows.append(row)
    return rows


def print_table(rows: list[dict[str, Any]], title: str) -> None:
    """Rich table of ``summary_rows`` on stdout."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col, label in (
        ("parameter", "parameter [LSB]"),
        ("mean", "mean"),
        ("std", "std"),
        ("lower", "5 %"),
        ("upper", "95 %"),
        ("map", "MAP"),
        ("true", "true"),
    ):
        if col in rows[0]:
            table.add_column(label, justify="left" if col == "parameter" else "right")
    for row in rows:
        cells = [row["parameter"]] + [
            f"{row[c]:.1f}" for c in ("mean", "std", "lower", "upper", "map", "true") if c in row
        ]
        table.add_row(*cells)
    Console().print(table)


def save_pairplot(
    result: dict[str, Any],
    info: dict[str, Any],
    out: str | Path,
    truth: NDArray[np.floating] | None = None,
) -> Path:
    """Pair plot of the posterior draws over the prior box (sbi's ``pairplot``), truth marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sbi.analysis import pairplot

    samples = np.asarray(result["samples"], dtype=np.float32)
    limits = [[p["low"], p["high"]] for p in info["parameters"]]
    labels = [f"{p['name']} [{p['unit']}]" for p in info["parameters"]]
    fig, _ = pairplot(
        samples,
        points=None if truth is None else np.asarray(truth, dtype=np.float32)[None, :],
        limits=limits,
        labels=labels,
        figsize=(12, 12),
    )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return out
