"""`connect_ray` under load: Ray's fixed 30 s raylet start window is retried once, then one line."""

from __future__ import annotations

import pytest

from farm.errors import FarmError
from farm.run import raycluster

TIMEOUT = Exception(
    "The current node timed out during startup. This could happen because some of the raylet "
    "failed to startup or the GCS has become overloaded."
)


def _fake_ray(monkeypatch: pytest.MonkeyPatch, outcomes: list[BaseException | None]) -> list[dict]:
    """ray.init answers with ``outcomes`` in turn (None: started); records calls and shutdowns."""
    import ray

    calls: list[dict] = []
    pending = list(outcomes)

    def init(**kwargs):
        calls.append(kwargs)
        outcome = pending.pop(0)
        if outcome is not None:
            raise outcome

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "shutdown", lambda: calls.append({"shutdown": True}))
    monkeypatch.setattr(raycluster, "_kill_ray_children", lambda: None)
    return calls


def test_a_missed_start_window_is_retried_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _fake_ray(monkeypatch, [TIMEOUT, None])
    assert raycluster.connect_ray(None) is True
    assert [("shutdown" in c) for c in calls] == [
        False,
        True,
        False,
    ]  # start, clean up, start again


def test_two_missed_windows_are_one_farm_error_line(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_ray(monkeypatch, [TIMEOUT, TIMEOUT])
    with pytest.raises(FarmError, match="did not start") as e:
        raycluster.connect_ray(None)
    assert "\n" not in str(e.value) and "--address" in str(e.value)


def test_a_cluster_address_is_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _fake_ray(monkeypatch, [TIMEOUT, None])
    with pytest.raises(FarmError):
        raycluster.connect_ray("127.0.0.1:1")
    assert len([c for c in calls if "shutdown" not in c]) == 1
