"""Trace embeddings (old configs build the old layout) and batches made off the training thread."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from farm.run.runner import run_farm
from inference.data.datasets import ChunkStream, StoreSet, plan_data
from inference.data.prefetch import background
from inference.nets.embeddings import STEMS, PairMax, TraceCNN


def test_pooled_is_the_default_and_keeps_the_old_weight_layout() -> None:
    """Artifacts from before ``stem`` hold these exact keys and shapes; they must load strictly."""
    old = TraceCNN(500.0, 50.0)
    shapes = {k: tuple(v.shape) for k, v in old.state_dict().items()}
    assert (
        shapes["conv.0.weight"] == (16, 2, 7)
        and shapes["conv.3.weight"] == (32, 16, 7)
        and shapes["conv.6.weight"] == (32, 32, 7)
    )
    assert shapes["head.0.weight"] == (64, 32 * 16)
    TraceCNN(1.0, 2.0, stem="pooled").load_state_dict(old.state_dict(), strict=True)
    with pytest.raises(RuntimeError):  # a patch net cannot silently take pooled weights
        TraceCNN(1.0, 2.0, stem="patch").load_state_dict(old.state_dict(), strict=True)


@pytest.mark.parametrize("length", [1000, 997])
def test_pooled_net_computes_what_it_was_trained_as_bit_for_bit(length: int) -> None:
    """The cheaper pair max (pool, then ReLU) gives the original conv -> ReLU -> MaxPool1d(2) net's
    summaries and weight gradients exactly, so artifacts and training runs keep their numbers.

    Odd lengths leave a last unpaired step that both drop; ties after ReLU (both zero) get zero
    gradient either way, and a tie above zero sends it to the first element in both.
    """
    torch.manual_seed(3)
    net = TraceCNN(500.0, 50.0)
    original = torch.nn.Sequential(
        *[torch.nn.MaxPool1d(2) if isinstance(m, PairMax) else m for m in net.conv]
    )
    for i in range(0, len(original) - 2, 3):  # conv, PairMax, ReLU -> conv, ReLU, MaxPool1d
        original[i + 1], original[i + 2] = original[i + 2], original[i + 1]
    trace = torch.randint(0, 1023, (64, length), dtype=torch.int16)
    trace[:, 100:110] = 700  # plateaus: exact ties inside pooling windows
    grads = []
    for conv in (net.conv, original):
        net.zero_grad()
        net.conv = conv
        out = net(trace)
        (out * torch.linspace(-1, 1, out.shape[1])).sum().backward()
        grads.append((out.detach(), [p.grad.clone() for p in net.parameters()]))
    assert torch.equal(grads[0][0], grads[1][0])
    assert all(torch.equal(a, b) for a, b in zip(grads[0][1], grads[1][1], strict=True))


@pytest.mark.parametrize("stem", STEMS)
# input pooling divides the length the CNN sees: 64 samples / 3 leave the pooled net too few steps
@pytest.mark.parametrize(
    ("length", "input_pool"), [(1000, 1), (997, 1), (64, 1), (1000, 3), (997, 3)]
)
def test_every_stem_summarises_any_trace_length(stem: str, length: int, input_pool: int) -> None:
    net = TraceCNN(
        500.0, 50.0, channels=(8, 16, 32), stem=stem, num_features=12, input_pool=input_pool
    )
    trace = torch.randint(0, 1023, (5, length), dtype=torch.int16)
    out = net(trace)
    assert out.shape == (5, 12) and torch.isfinite(out).all()
    out.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


def test_patch_stem_sees_a_single_sample_reset() -> None:
    """A reset moved by one sample must change the summary: the stem doesn't average spikes away."""
    torch.manual_seed(0)
    net = TraceCNN(500.0, 50.0, stem="patch").eval()
    trace = torch.full((2, 1000), 600, dtype=torch.int16)
    trace[0, 403:] = 400
    trace[1, 404:] = 400
    with torch.no_grad():
        a, b = net(trace)
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("estimator", ["nsf", "flow-matching"])
def test_hybrid_embeds_the_statistics_unchanged_beside_the_cnn_of_the_trace(estimator: str) -> None:
    """The flow's context is [z-scored statistics | CNN(trace)].

    The statistics reach it exactly as the handcrafted embedding gives them, and the learned part
    depends on the trace alone."""
    from inference.defaults import HYBRID_ARCH
    from inference.nets.embeddings import Standardize, model_input
    from inference.nets.flow_matching import FlowMatchingConfig, FlowMatchingModel
    from inference.nets.nsf import FlowConfig, NPEModel

    f = 11
    stats = {"low": [0.0] * 7, "high": [1.0] * 7, "theta_mean": [0.0] * 7, "theta_std": [1.0] * 7}
    stats |= {
        "feature_mean": list(np.linspace(1, 5, f)),
        "feature_std": list(np.linspace(0.5, 2, f)),
        "trace_mean": 500.0,
        "trace_std": 50.0,
    }
    torch.manual_seed(0)
    if estimator == "nsf":
        model = NPEModel(FlowConfig(variant="hybrid", **HYBRID_ARCH), stats)
    else:
        model = FlowMatchingModel(FlowMatchingConfig(variant="hybrid", **HYBRID_ARCH), stats)
    assert model.x_fields == ("features", "trace")
    rng = np.random.default_rng(1)
    batch = {
        "features": rng.normal(3, 1, (4, f)).astype(np.float32),
        "trace": rng.integers(0, 1023, (4, 1000)).astype(np.int16),
    }
    x = torch.from_numpy(model_input(batch, model.x_fields))
    assert (
        x.dtype == torch.float32
        and x.shape == (4, f + 1000)
        and torch.equal(x[:, f:], torch.from_numpy(batch["trace"]).float())
    )
    with torch.no_grad():
        ctx = model.embedding(x)
        assert ctx.shape == (4, f + HYBRID_ARCH["embedding_features"])
        assert torch.equal(
            ctx[:, :f],
            Standardize(stats["feature_mean"], stats["feature_std"])(
                torch.from_numpy(batch["features"])
            ),
        )
        other = x.clone()
        other[:, :f] += 1.0  # other statistics, the same trace: the learned half is unchanged
        assert torch.equal(model.embedding(other)[:, f:], ctx[:, f:])
    loss = model(torch.full((4, 7), 0.5), x)
    loss.backward()
    assert torch.isfinite(loss) and all(
        p.grad is not None for p in model.embedding.trace.parameters()
    )


def test_unknown_stem_is_a_one_line_value_error() -> None:
    with pytest.raises(ValueError, match=r"cnn_stem='conv' must be one of pooled, patch"):
        TraceCNN(500.0, 50.0, stem="conv")


def test_background_keeps_order_counts_waits_and_raises_where_the_item_would_be() -> None:
    class Owner:
        wait_seconds = 0.0

    def source():
        yield from range(5)
        raise KeyError("bad chunk")

    owner = Owner()
    got = []
    with pytest.raises(KeyError, match="bad chunk"):
        for item in background(source(), 2, owner):
            got.append(item)
    assert got == [0, 1, 2, 3, 4] and owner.wait_seconds >= 0.0


def test_background_stops_its_thread_and_closes_the_source_when_the_consumer_stops() -> None:
    closed = threading.Event()

    def endless():
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed.set()

    it = background(endless(), 3)
    assert [next(it) for _ in range(4)] == [0, 1, 2, 3]
    it.close()  # what a `break` out of the training loop does
    assert closed.wait(10) and not any(
        t.name == "batch-prefetch" and t.is_alive() for t in threading.enumerate()
    )


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("dp") / "s.zarr")
    run_farm(path, num_sims=1500, seed=5, chunk_size=250, in_process=True)
    return path


def test_steady_batches_are_the_same_built_on_a_thread_or_inline(store: str) -> None:
    stores = StoreSet([store])
    plan = plan_data(stores)

    def take(ahead: int) -> list[dict[str, np.ndarray]]:
        stream = ChunkStream(stores, plan, "train", ("theta", "trace"), 64)
        out = list(stream.steady(3, 25, ahead=ahead))
        assert stream.wait_seconds >= 0.0
        return out

    threaded, inline = take(8), take(0)
    assert len(threaded) == len(inline) == 25  # 25 steps > one pass of ~1200 train rows: it cycles
    for a, b in zip(threaded, inline, strict=True):
        for k in ("theta", "trace", "index"):
            np.testing.assert_array_equal(a[k], b[k])
