"""The training loop, its callback, its settings and the paper's setting."""

from __future__ import annotations

import math
import warnings
from dataclasses import replace

import numpy
import pytest

from minimal_icl import IDENTITY_RTOL, TransformerConfig, init_params, tree_leaves
from minimal_icl.data import regression_prompts
from minimal_icl.train import (
    History,
    OptimizerSettings,
    Report,
    TrainingDivergedError,
    TrainingSetup,
    compare_with_baselines,
    evaluate,
    paper_setting,
    train,
    train_setup,
)

SMALL = TransformerConfig(d_token=3, n_blocks=1, n_heads=2, d_head=4, d_mlp=16)

# A short run learns: its last held-out loss is below this share of its first (measured
# 0.34 after 120 Adam steps, 0.51 after 80 steps of SGD with momentum).
ADAM_LEARNS, SGD_LEARNS = 0.6, 0.8
# The zero predictor's mean squared error on 500 prompts against E⟨w, x⟩² = d = 2: its
# relative standard error is 9 % (measured 2.04).
ZERO_MSE_RTOL = 0.2
# A mean squared error that must be 0 but for rounding (least squares on noiseless
# prompts: measured 1.7e-31).
EXACT_MSE = 1e-20
# A paired difference of two means of size about 2 against the difference of the means:
# rounding (measured 2.2e-16).
DIFFERENCE_ATOL = 1e-12


def _run(steps=120, seed=0, **kwargs):
    params = init_params(SMALL, seed=seed)
    settings = kwargs.pop("optimizer", OptimizerSettings(lr=5e-3))
    return train(
        SMALL,
        params,
        settings,
        steps=steps,
        batch_size=32,
        n_context=20,
        d=2,
        seed=seed,
        val_every=kwargs.pop("val_every", 40),
        val_size=256,
        **kwargs,
    )


def test_short_run_reduces_held_out_loss():
    """A smoke test of the loop (not a gradient proof): 120 Adam steps cut the held-out loss."""
    result = _run(steps=120)
    history = result.history
    assert isinstance(history, History)
    assert history.val_step.tolist() == [0, 40, 80, 120]
    assert history.val_loss[-1] < ADAM_LEARNS * history.val_loss[0]
    assert history.step.tolist() == list(range(1, 121))
    assert history.train_loss.shape == (120,) and numpy.all(numpy.isfinite(history.train_loss))
    assert numpy.all(numpy.diff(history.wall_time) >= 0)
    # the recorded value is the held-out loss of the returned parameters
    val = regression_prompts(
        256, 20, 2, numpy.random.default_rng(numpy.random.SeedSequence(0).spawn(2)[1])
    )
    assert evaluate(result.params, SMALL, val) == pytest.approx(
        history.val_loss[-1], rel=IDENTITY_RTOL
    )


def test_training_is_deterministic():
    a, b = _run(steps=30), _run(steps=30)
    for (_, x), (_, y) in zip(tree_leaves(a.params), tree_leaves(b.params)):
        assert numpy.array_equal(x, y)
    assert numpy.array_equal(a.history.train_loss, b.history.train_loss)
    c = _run(steps=30, seed=1)
    assert not numpy.array_equal(a.history.train_loss, c.history.train_loss)


def test_sgd_with_momentum_trains_too():
    result = _run(steps=80, optimizer=OptimizerSettings(name="sgd", lr=0.02, momentum=0.9))
    assert result.history.val_loss[-1] < SGD_LEARNS * result.history.val_loss[0]


def test_callback_receives_the_parameters_and_the_losses():
    """The callback sees step 0, every read-back of the losses (after FLUSH_EVERY = 50
    steps or at a held-out measurement) and the last step; its parameters are those after
    ``step`` steps, its losses those so far."""
    reports = []
    constant = OptimizerSettings(lr=5e-3)  # no schedule: a shorter run takes the same steps
    result = _run(steps=120, val_every=60, optimizer=constant, callback=reports.append)
    assert all(isinstance(r, Report) and r.steps == 120 for r in reports)
    assert [r.step for r in reports] == [0, 50, 60, 110, 120]
    assert [r.step for r in reports if r.val_loss is not None] == [0, 60, 120]
    measured = [r.val_loss for r in reports if r.val_loss is not None]
    assert measured == result.history.val_loss.tolist()
    for r in reports:
        assert numpy.array_equal(r.train_loss, result.history.train_loss[: r.step])
    assert all(r.wall_time >= 0 for r in reports)
    assert numpy.all(numpy.diff([r.wall_time for r in reports]) >= 0)
    # the parameters at step 60 are those of a 60-step run; at the end, the result's
    shorter = _run(steps=60, val_every=60, optimizer=constant)
    for (name, a), (_, b) in zip(tree_leaves(reports[2].params), tree_leaves(shorter.params)):
        assert numpy.array_equal(a, b), name
    for (name, a), (_, b) in zip(tree_leaves(reports[-1].params), tree_leaves(result.params)):
        assert numpy.array_equal(a, b), name
    # and the held-out loss reported is that of the parameters reported
    val = regression_prompts(
        256, 20, 2, numpy.random.default_rng(numpy.random.SeedSequence(0).spawn(2)[1])
    )
    assert evaluate(reports[2].params, SMALL, val) == pytest.approx(
        reports[2].val_loss, rel=IDENTITY_RTOL
    )


@pytest.mark.parametrize("optimizer", [OptimizerSettings(name="sgd", lr=1e6),
                                       OptimizerSettings(name="adam", lr=1e100)])
def test_divergence_raises_a_clear_error(optimizer):
    """The named error, and no NumPy RuntimeWarning (overflow in matmul) before it."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        with pytest.raises(TrainingDivergedError, match="diverged at step"):
            _run(steps=50, optimizer=optimizer)


def test_learning_rate_schedule():
    constant = OptimizerSettings(lr=0.1, warmup_steps=4)
    assert [constant.lr_at(t, 10) for t in (1, 2, 4, 5, 10)] == pytest.approx(
        [0.025, 0.05, 0.1, 0.1, 0.1]
    )
    cosine = OptimizerSettings(lr=0.1, schedule="cosine", final_lr_fraction=0.1)
    assert cosine.lr_at(1, 101) == pytest.approx(
        0.1 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 101)))
    )
    assert cosine.lr_at(101, 101) == pytest.approx(0.01)
    lrs = [cosine.lr_at(t, 101) for t in range(1, 102)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(name="adagrad"), "name"),
        (dict(schedule="linear"), "schedule"),
        (dict(lr=0.0), "lr"),
        (dict(lr=math.nan), "lr"),
        (dict(warmup_steps=-1), "warmup_steps"),
        (dict(final_lr_fraction=2.0), "final_lr_fraction"),
    ],
)
def test_bad_optimizer_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        OptimizerSettings(**kwargs)


def test_bad_training_arguments():
    params = init_params(SMALL)
    with pytest.raises(ValueError, match="d_token"):
        train(SMALL, params, OptimizerSettings(), steps=1, batch_size=2, n_context=3, d=3)
    with pytest.raises(ValueError, match="steps"):
        train(SMALL, params, OptimizerSettings(), steps=0, batch_size=2, n_context=3, d=2)
    with pytest.raises(ValueError, match="shape"):
        train(
            replace(SMALL, d_mlp=5),
            params,
            OptimizerSettings(),
            steps=1,
            batch_size=2,
            n_context=3,
            d=2,
        )


def test_training_on_every_backend_keeps_dtype_and_device(backend):
    config = TransformerConfig(d_token=3, n_blocks=1, n_heads=1, d_head=2, d_mlp=4)
    for dtype in ("float32", "float64"):
        params = init_params(config, seed=0, dtype=dtype, xp=backend.xp, device=backend.device)
        result = train(
            config,
            params,
            OptimizerSettings(lr=1e-2),
            steps=3,
            batch_size=4,
            n_context=5,
            d=2,
            val_every=3,
            val_size=8,
        )
        for name, value in tree_leaves(result.params):
            assert value.dtype == getattr(backend.xp, dtype), name
            if backend.device is not None:
                assert value.device == backend.device
        assert numpy.all(numpy.isfinite(result.history.val_loss))


def test_paper_setting_is_the_papers_model():
    setup = paper_setting()
    c = setup.config
    assert (c.d_token, c.n_blocks, c.attention) == (3, 1, "softmax")
    assert not (c.attn_skip or c.mlp_skip or c.layer_norm or c.causal)
    assert (setup.n_context, setup.d, setup.noise) == (50, 2, 0.0)
    fast = paper_setting(fast=True)
    assert fast.config == c and fast.steps < setup.steps
    assert TrainingSetup.from_dict(setup.to_dict()) == setup
    assert "Our choices" in paper_setting.__doc__
    assert "docs/paper_setting.md" in paper_setting.__doc__


def test_comparison_table_has_every_baseline():
    setup = replace(paper_setting(fast=True), config=SMALL, n_context=20, steps=10)
    result = train_setup(setup, seed=0)
    table = compare_with_baselines(result.params, setup, n_prompts=500, seed=0)
    names = list(table)
    assert names[0] == "trained model" and "zero predictor" in names and "least squares" in names
    assert any(name.startswith("one step of GD") for name in names)
    assert table["zero predictor"].mse == pytest.approx(2.0, rel=ZERO_MSE_RTOL)
    assert table["least squares"].mse <= EXACT_MSE
    assert all(row.stderr > 0 for name, row in table.items() if name != "least squares")
    model = table["trained model"]
    assert model.excess == 0.0 and model.excess_stderr == 0.0
    for row in table.values():  # the paired difference is the difference of the means
        assert row.excess == pytest.approx(row.mse - model.mse, abs=DIFFERENCE_ATOL)


def test_comparison_prompts_are_the_third_stream_and_ridge_uses_sigma_squared():
    """The held-out prompts are child 2 of SeedSequence(seed) (training and validation use
    children 0 and 1), and with label noise σ the ridge row is ridge with λ = σ²/τ² = σ²."""
    from minimal_icl.data import mse, ridge_predict, zero_predict
    from minimal_icl.tolerances import IDENTITY_RTOL

    noise = 0.5
    setup = replace(paper_setting(fast=True), config=SMALL, n_context=4, noise=noise)
    params = init_params(SMALL, seed=0)
    table = compare_with_baselines(params, setup, n_prompts=64, seed=3)
    rng = numpy.random.default_rng(numpy.random.SeedSequence(3).spawn(3)[2])
    batch = regression_prompts(64, 4, 2, rng, noise)
    assert table["zero predictor"].mse == mse(zero_predict(batch), batch.target)
    assert table["ridge (λ = σ²)"].mse == pytest.approx(
        mse(ridge_predict(batch, noise**2), batch.target), rel=IDENTITY_RTOL
    )
    # λ = σ instead of σ² moves this MSE by 1.5 %, 1e10 times the tolerance above
    wrong = mse(ridge_predict(batch, noise), batch.target)
    assert table["ridge (λ = σ²)"].mse != pytest.approx(wrong, rel=IDENTITY_RTOL)
