"""Flow-matching estimator: exact divergence, a consistent ODE density, a toy posterior learned."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

from inference.nets import flow_matching as fm
from inference.nets.flow_matching import (
    ConditionalVectorField,
    FlowMatchingConfig,
    FlowMatchingModel,
    VectorField,
    time_grid,
)


@pytest.fixture(autouse=True)
def _one_thread():
    """Two shared cores: one intra-op thread avoids oversubscription stalls."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _random_field(
    dim: int = 3, context: int = 4, seed: int = 0, scale: float = 0.4
) -> ConditionalVectorField:
    torch.manual_seed(seed)
    flow = ConditionalVectorField(
        dim,
        context,
        FlowMatchingConfig(
            hidden_features=16, condition_features=16, time_features=8, ode_steps=16
        ),
    ).double()
    for p in flow.parameters():  # default init zeroes nothing, but scale up so every term matters
        p.data.normal_(0.0, scale)
    return flow


def test_divergence_is_the_trace_of_the_jacobian():
    net: VectorField = _random_field().net
    z = torch.randn(12, 3, dtype=torch.float64, requires_grad=True)
    ctx, t = torch.randn(12, 4, dtype=torch.float64), torch.rand(12, dtype=torch.float64)
    v, div = net.velocity(z, net.modulation(net.context_term(ctx), t), with_divergence=True)
    trace = sum(torch.autograd.grad(v[:, i].sum(), z, retain_graph=True)[0][:, i] for i in range(3))
    # float64 arithmetic of two exact formulas: agreement to ~1e-12 leaves no room for a missing
    # term
    torch.testing.assert_close(div, trace, rtol=1e-10, atol=1e-10)


def test_density_matches_the_jacobian_of_the_solved_map_and_inverts():
    flow = _random_field(scale=0.15)  # a smooth field, so 16 RK4 steps resolve it
    context = torch.randn(1, 4, dtype=torch.float64)
    q = flow(context)
    z0 = torch.randn(3, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(
        lambda a: q._solve(a.reshape(1, 1, 3), time_grid(16), False)[0].reshape(3), z0
    )
    z1, ell = q._solve(z0.reshape(1, 1, 3), time_grid(16), True)
    # RK4 with 16 steps: the integrated divergence and the discrete map's log-determinant differ by
    # the solver's O(h^4) error, ~1e-6 here; 1e-3 nats is far below any density a test compares
    assert abs(float(ell.reshape(()).detach()) - float(torch.logdet(jac))) < 1e-3
    lp_forward = q._base_log_prob(z0) - ell.reshape(())
    torch.testing.assert_close(
        q.log_prob(z1.reshape(1, 3)).reshape(()), lp_forward.reshape(()), rtol=0, atol=1e-4
    )


def test_chunked_solves_give_the_same_draws(monkeypatch):
    flow = _random_field().float()
    q = flow(torch.randn(3, 4))
    torch.manual_seed(5)
    whole, lp_whole = q.rsample_and_log_prob((50,))
    monkeypatch.setattr(fm, "_CHUNK_ROWS", 16)
    torch.manual_seed(5)
    parts, lp_parts = q.rsample_and_log_prob((50,))
    assert whole.shape == (50, 3, 3) and lp_whole.shape == (50, 3)
    torch.testing.assert_close(parts, whole)
    torch.testing.assert_close(lp_parts, lp_whole)


# --------------------------------------------------------------------------- a known posterior
# theta ~ N(0, I), x = theta + N(0, NOISE^2 I):
# q(theta | x) = N(x / (1 + NOISE^2), NOISE^2 / (1 + NOISE^2) I)
DIM, NOISE = 3, 0.3
POST_STD = math.sqrt(NOISE**2 / (1 + NOISE**2))


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    theta = torch.randn(20_000, DIM)
    x = theta + NOISE * torch.randn_like(theta)
    flow = ConditionalVectorField(
        DIM, DIM, FlowMatchingConfig(hidden_features=64, condition_features=64)
    )
    opt = torch.optim.Adam(flow.parameters(), lr=3e-3)
    steps = 1000
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(
        opt, steps
    )  # the regression target is noisy: anneal
    held_theta = torch.randn(4000, DIM)
    held_x = held_theta + NOISE * torch.randn_like(held_theta)

    def held_out_loss() -> float:  # fixed times and noise: before and after see the same draws
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(123)
            return float(flow.loss(held_theta, held_x).mean())

    losses = [held_out_loss()]
    for _ in range(steps):
        i = torch.randint(0, len(theta), (512,))
        loss = flow.loss(theta[i], x[i]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        decay.step()
    losses.append(held_out_loss())
    return flow.eval(), losses


def test_loss_decreases(trained):
    before, after = trained[1]
    # an untrained field gives ~E|u|^2 = 2 per dimension; the learned one ~0.5 (the regression's
    # irreducible part); halving on 4000 held-out pairs is far outside run-to-run noise
    assert after < 0.5 * before


def test_samples_and_densities_match_the_analytic_posterior(trained):
    flow, _ = trained
    x_obs = torch.tensor([[0.5, -1.0, 2.0], [0.0, 0.0, 0.0]])
    mean = x_obs / (1 + NOISE**2)
    n = 4000
    with torch.inference_mode():
        torch.manual_seed(1)
        z, lp = flow(x_obs).rsample_and_log_prob((n,))
        lp_back = flow(x_obs).log_prob(z)
    assert z.shape == (n, 2, DIM) and lp.shape == (n, 2)
    # Monte Carlo error of the mean is POST_STD / sqrt(4000) ~ 0.016 POST_STD; the rest of the
    # 0.35 POST_STD budget is the estimator's error after 1000 steps on 20k pairs (at most ~0.13
    # across seeds)
    assert torch.all((z.mean(0) - mean).abs() < 0.35 * POST_STD)
    # std of a std estimate ~ 1 / sqrt(2n) ~ 1 %; a learned posterior within 20 % of the width
    ratio = z.std(0) / POST_STD
    assert torch.all((ratio > 0.8) & (ratio < 1.2)), ratio
    truth = torch.distributions.Normal(mean, POST_STD).log_prob(z).sum(-1).double()
    # the density error per draw is the learned field's error (a mean of 0.06-0.09 nats across
    # seeds)
    assert float((lp - truth).abs().mean()) < 0.3
    # the same density by the forward (sampling) and backward (log_prob) solves: RK4 error only
    assert float((lp - lp_back).abs().max()) < 0.05


# --------------------------------------------------------------------------- the posterior model
STATS = {
    "low": [0.0, 10.0, 0.0],
    "high": [1.0, 20.0, 5.0],
    "theta_mean": [0.0] * 3,
    "theta_std": [1.0] * 3,
    "feature_mean": [0.0] * 2,
    "feature_std": [1.0] * 2,
}


def test_model_draws_stay_in_the_box_and_weights_reload_without_pickle():
    torch.manual_seed(0)
    model = FlowMatchingModel(
        FlowMatchingConfig(hidden_features=16, condition_features=16, ode_steps=4), STATS
    ).eval()
    for p in model.flow.parameters():
        p.data.normal_(0.0, 0.5)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    again = FlowMatchingModel(FlowMatchingConfig.from_dict(model.config.to_dict()), STATS).eval()
    again.load_state_dict(torch.load(buf, weights_only=True))
    x = torch.randn(2, 2)
    with torch.inference_mode():
        ctx = model.embedding(x)
        torch.manual_seed(3)
        z = model.flow(ctx).sample((500,))
        torch.manual_seed(3)
        z2 = again.flow(again.embedding(x)).sample((500,))
        theta = model.theta_transform.inverse(z)
        lp = model.log_prob(theta[:, 0], ctx[:1])
    torch.testing.assert_close(z, z2, rtol=0, atol=0)
    low, high = (
        torch.tensor(STATS["low"], dtype=torch.float64),
        torch.tensor(STATS["high"], dtype=torch.float64),
    )
    assert torch.all((theta >= low) & (theta <= high))
    assert lp.shape == (500,) and torch.all(torch.isfinite(lp))
    assert model.forward(theta[:, 0].float(), x[:1].expand(500, -1)).ndim == 0


def test_config_round_trips_and_rejects_bad_values():
    cfg = FlowMatchingConfig(
        variant="summary-net",
        cnn_channels=(8, 8),
        ode_method="midpoint",
        cnn_input_pool=2,
        time_samples=4,
    )
    d = cfg.to_dict()
    assert d["estimator"] == "flow-matching"
    assert FlowMatchingConfig.from_dict(d) == cfg
    # a manifest written before the summary net's stem and input pooling were choices rebuilds that
    # net
    old = {k: v for k, v in d.items() if k not in ("cnn_stem", "cnn_input_pool", "time_samples")}
    rebuilt = FlowMatchingConfig.from_dict(old)
    assert (rebuilt.cnn_stem, rebuilt.cnn_input_pool, rebuilt.time_samples) == ("pooled", 1, 1)
    bad_values = (
        {"ode_method": "euler"},
        {"ode_steps": 0},
        {"time_features": 7},
        {"variant": "raw"},
        {"sigma_min": 1.0},
    )
    for bad in (*bad_values, {"cnn_stem": "conv"}, {"cnn_input_pool": 0}, {"time_samples": 0}):
        with pytest.raises(ValueError, match=next(iter(bad)).replace("variant", "features")):
            FlowMatchingConfig(**bad)


def test_cli_rejects_an_unknown_estimator(capsys):
    from deploy.cli import main

    assert main(["train", "npe", "--store", "runs/none.zarr", "--estimator", "maf"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'maf'" in err and "nsf or flow-matching" in err


@pytest.mark.parametrize(
    ("arch", "named"),
    [
        ("depth=3", "'depth=3'"),
        ("time_samples", "'time_samples'"),
        ("time_samples=0", "time_samples=0"),
        ("cnn_stem=conv", "cnn_stem='conv'"),
    ],
)
def test_cli_rejects_a_bad_architecture_field_in_one_line(capsys, arch, named):
    from deploy.cli import main

    argv = [
        "train",
        "npe",
        "--store",
        "runs/none.zarr",
        "--estimator",
        "flow-matching",
        "--features",
        "summary-net",
        "--arch",
        arch,
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and named in err and "--arch" in err


def test_task_keeps_nsf_configs_and_carries_the_estimator_to_workers():
    from inference.defaults import TrainConfig
    from inference.training.tasks import NPETask, task_for

    base = TrainConfig(task="npe", stores=("s.zarr",), out="o")
    nsf = NPETask().configure(base)
    assert "estimator" not in nsf.flow  # NSF runs and artifacts read as before
    fmc = NPETask(estimator="flow-matching").configure(base)
    assert fmc.flow["estimator"] == "flow-matching"
    worker = task_for(TrainConfig.from_dict({**fmc.identity(), "out": "o"}))
    assert isinstance(
        worker.build_model(fmc, {**STATS, "feature_mean": [0.0] * 11, "feature_std": [1.0] * 11}),
        FlowMatchingModel,
    )
    with pytest.raises(ValueError, match="estimator='maf' must be one of nsf, flow-matching"):
        NPETask(estimator="maf")


def test_each_row_averages_its_time_samples_over_one_embedding():
    """K path points per row: the row's loss is the mean of K single-point losses on those draws."""
    cfg = FlowMatchingConfig(hidden_features=16, condition_features=16, time_samples=4)
    flow = ConditionalVectorField(3, 5, cfg)
    z1, ctx = torch.randn(6, 3), torch.randn(6, 5)
    torch.manual_seed(7)
    per_row = flow.loss(z1, ctx)
    single = ConditionalVectorField(
        3, 5, FlowMatchingConfig(hidden_features=16, condition_features=16)
    )
    single.load_state_dict(flow.state_dict())
    torch.manual_seed(7)
    each = single.loss(z1.repeat(4, 1), ctx.repeat(4, 1)).reshape(4, 6)
    assert per_row.shape == (6,)
    torch.testing.assert_close(per_row, each.mean(0))


def test_validation_sees_the_same_draws_every_epoch_and_leaves_training_randomness_alone():
    """The validation loss must be a function of the weights only.

    A stochastic validation loss that changed between epochs by noise alone would halve the
    learning rate and stop training on noise."""
    from inference.training.loop import _validate
    from inference.training.tasks import NPETask

    rng = np.random.default_rng(0)
    batches = [  # the fixed validation subset _validate reads every round
        {
            "theta": rng.uniform(STATS["low"], STATS["high"], (64, 3)),
            "features": rng.normal(size=(64, 2)).astype(np.float32),
        }
        for _ in range(3)
    ]

    torch.manual_seed(0)
    model = FlowMatchingModel(FlowMatchingConfig(hidden_features=16, condition_features=16), STATS)
    task = NPETask(estimator="flow-matching")
    state = torch.get_rng_state()
    first = _validate(task, model, batches, world=1)
    assert torch.equal(torch.get_rng_state(), state)
    torch.rand(10)  # training draws in between
    assert _validate(task, model, batches, world=1) == first
