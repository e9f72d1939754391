"""An HTTP observation checked against the served protocol: flat or one list per sweep.

One 422 line if neither.

Why apart from the service: the command line (`farm query`) and the Serve app accept the same
two forms, and the message naming the expected shape must read the same in both.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from deploy.serve.http_errors import RequestRejected
from farm.defaults import Protocol


def expected_shape(protocol: Protocol, trace_length: int) -> str:
    """``(1000,)`` for one sweep; ``(4000,) or (4, 1000)`` for four sweeps of 1000 samples."""
    if protocol.num_sweeps == 1:
        return f"({trace_length},)"
    s, t = protocol.observation_shape
    return f"({trace_length},) or ({s}, {t}) (protocol {protocol.label}: {s} sweeps of {t} samples)"


def as_observation(trace: Any, protocol: Protocol, trace_length: int) -> NDArray[np.int16]:
    """A trace as the flat (trace_length,) int16 codes the posterior reads.

    Args:
        trace: codes, flat (sweeps * T,) or one row per sweep (sweeps, T).
        protocol, trace_length: what the served posterior was trained on.

    Raises:
        ValueError: any other shape (a ragged list included), naming the expected one.
    """
    try:
        a = np.asarray(trace, dtype=np.int16)
    except (ValueError, TypeError):
        raise ValueError(
            "trace is not a list of codes or a list of equal-length sweeps; "
            f"expected shape {expected_shape(protocol, trace_length)}"
        ) from None
    if a.ndim == 2 and protocol.num_sweeps > 1 and a.shape == protocol.observation_shape:
        return a.reshape(-1)
    if a.ndim != 1 or a.shape[0] != trace_length:
        raise ValueError(
            f"trace shape {a.shape} differs from this posterior's observation shape "
            f"{expected_shape(protocol, trace_length)}"
        )
    return a


def observation_trace(trace: Any, protocol: Protocol, trace_length: int) -> NDArray[np.int16]:
    """``as_observation`` for a request body: its ValueError becomes the 422 naming ``trace``."""
    try:
        return as_observation(trace, protocol, trace_length)
    except ValueError as e:
        raise RequestRejected("trace", str(e)) from None


__all__ = ["as_observation", "expected_shape", "observation_trace"]
