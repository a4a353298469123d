"""Training on in-context linear regression: the loop, its settings, and the paper's setting.

One step, on a fresh batch of prompts (never repeated):

    out, cache = forward(params, config, tokens, last_only=True)   # the query row only
    loss, dout = query_loss(out, target)
    _, grads   = backward(dout, cache)
    params, state = adam_step(params, grads, state, lr)             # or sgd_step

Every ``val_every`` steps the loss on a fixed held-out batch is recorded. The result is
the final parameters and a :class:`History` of NumPy arrays (host memory, ready for a
checkpoint or a plot).
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import NamedTuple

import numpy

from .backend import device as array_device
from .backend import namespace, to_device, tree_leaves
from .config import TransformerConfig
from .data import (
    RegressionBatch,
    least_squares_predict,
    mse,
    one_step_gd_predict,
    optimal_gd_step,
    regression_prompts,
    regression_stream,
    ridge_lambda,
    ridge_predict,
    zero_predict,
)
from .loss import query_loss
from .model import backward, check_params, forward, predict
from .optim import adam_init, adam_step, sgd_init, sgd_step
from .params import ModelParams, init_params

OPTIMIZERS = ("adam", "sgd")
FLUSH_EVERY = 50  # training losses are read back to the host this many steps at a time
SCHEDULES = ("constant", "cosine")


class TrainingDivergedError(ValueError):
    """The training loss became NaN or infinite."""


# -- settings --------------------------------------------------------------------------


@dataclass(frozen=True)
class OptimizerSettings:
    """Which optimiser, and its learning-rate schedule.

    lr(t) for step t = 1..S: a linear warm-up from lr/warmup_steps to lr over the first
    ``warmup_steps`` steps, then ``"constant"``, or ``"cosine"`` decay from lr down to
    lr · final_lr_fraction at t = S.
    """

    name: str = "adam"
    lr: float = 1e-3
    beta1: float = 0.9  # Adam
    beta2: float = 0.999  # Adam
    eps: float = 1e-8  # Adam
    momentum: float = 0.0  # SGD
    schedule: str = "constant"
    warmup_steps: int = 0
    final_lr_fraction: float = 0.0

    def __post_init__(self):
        if self.name not in OPTIMIZERS:
            raise ValueError(
                f"OptimizerSettings.name must be one of {OPTIMIZERS}, got {self.name!r}"
            )
        if self.schedule not in SCHEDULES:
            raise ValueError(
                f"OptimizerSettings.schedule must be one of {SCHEDULES}, got {self.schedule!r}"
            )
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"OptimizerSettings.lr must be a finite float > 0, got {self.lr!r}")
        if not (isinstance(self.warmup_steps, int) and self.warmup_steps >= 0):
            raise ValueError(
                f"OptimizerSettings.warmup_steps must be an int ≥ 0, got {self.warmup_steps!r}"
            )
        if not (0.0 <= self.final_lr_fraction <= 1.0):
            raise ValueError(
                f"OptimizerSettings.final_lr_fraction must be in [0, 1], got {self.final_lr_fraction!r}"
            )

    def lr_at(self, step: int, total_steps: int) -> float:
        """The learning rate of step ``step`` (1-based) out of ``total_steps``."""
        if step <= self.warmup_steps:
            return self.lr * step / self.warmup_steps
        if self.schedule == "constant":
            return self.lr
        span = max(total_steps - self.warmup_steps, 1)
        progress = min((step - self.warmup_steps) / span, 1.0)
        low = self.lr * self.final_lr_fraction
        return low + (self.lr - low) * 0.5 * (1.0 + math.cos(math.pi * progress))


def optimizer_init(settings: OptimizerSettings, params):
    """The initial optimiser state for ``params``."""
    if settings.name == "adam":
        return adam_init(params)
    return sgd_init(params, settings.momentum)


def optimizer_step(settings: OptimizerSettings, params, grads, state, lr: float):
    """One step of the chosen optimiser; returns (params, state)."""
    if settings.name == "adam":
        return adam_step(params, grads, state, lr, settings.beta1, settings.beta2, settings.eps)
    return sgd_step(params, grads, state, lr, settings.momentum)


@dataclass(frozen=True)
class TrainingSetup:
    """Everything that defines a training run except the seed."""

    config: TransformerConfig
    optimizer: OptimizerSettings
    steps: int
    batch_size: int
    n_context: int
    d: int
    noise: float = 0.0
    val_every: int = 500
    val_size: int = 2048

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TrainingSetup:
        values = dict(values)
        values["config"] = TransformerConfig.from_dict(values["config"])
        values["optimizer"] = OptimizerSettings(**values["optimizer"])
        return cls(**values)


# -- one step --------------------------------------------------------------------------


def train_step(
    params,
    state,
    config: TransformerConfig,
    batch: RegressionBatch,
    optimizer: OptimizerSettings,
    lr: float,
):
    """forward (query row only) + loss + backward + optimiser step.

    Returns (params, state, loss) with loss a 0-d array (``float(loss)`` reads it).
    """
    # The loss reads only the query position, so the last block computes that row only.
    out, cache = forward(params, config, batch.tokens, last_only=True)  # (B, 1, D)
    loss, dout = query_loss(out, batch.target)
    _, grads = backward(dout, cache)
    params, state = optimizer_step(optimizer, params, grads, state, lr)
    return params, state, loss


def predict_in_chunks(params, config: TransformerConfig, tokens, chunk: int = 1024):
    """``predict`` over (B, T, D) tokens, ``chunk`` prompts at a time (bounded memory); (B,)."""
    xp = namespace(tokens)
    B = tokens.shape[0]
    return xp.concat(
        [predict(params, config, tokens[i : min(i + chunk, B), ...]) for i in range(0, B, chunk)]
    )


def evaluate(params, config: TransformerConfig, batch: RegressionBatch) -> float:
    """The model's mean squared error on ``batch``."""
    return mse(predict_in_chunks(params, config, batch.tokens), batch.target)


class HeldOut(NamedTuple):
    """One row of :func:`compare_with_baselines`."""

    mse: float  # mean squared error on the held-out prompts
    stderr: float  # its standard error
    excess: float  # mean over the same prompts of (this squared error − the model's)
    excess_stderr: float  # its standard error (a paired comparison: the prompts are shared)


def compare_with_baselines(
    params, setup: TrainingSetup, n_prompts: int = 10_000, seed: int = 0
) -> dict[str, HeldOut]:
    """Held-out errors of the model and of the baselines on ``n_prompts`` new prompts.

    The prompts come from a third stream of ``seed``, independent of the training and
    validation prompts of :func:`train`. Rows: the trained model, the zero predictor, one
    step of GD with the optimal step η* = 1/(1 + (d+1)/N), least squares (and ridge with
    λ = σ² if σ > 0). ``excess`` compares each row with the model prompt by prompt, so
    its standard error is much smaller than the two MSEs' own.
    """
    first = tree_leaves(params)[0][1]
    xp, dtype, device = namespace(first), first.dtype, array_device(first)
    rng = numpy.random.default_rng(numpy.random.SeedSequence(seed).spawn(3)[2])
    batch = regression_prompts(
        n_prompts, setup.n_context, setup.d, rng, setup.noise, dtype, xp, device
    )
    eta = optimal_gd_step(setup.d, setup.n_context)
    predictions = {
        "trained model": predict_in_chunks(params, setup.config, batch.tokens),
        "zero predictor": zero_predict(batch),
        f"one step of GD (η* = {eta:.3f})": one_step_gd_predict(batch, eta),
        "least squares": least_squares_predict(batch),
    }
    if setup.noise > 0:
        predictions["ridge (λ = σ²)"] = ridge_predict(batch, ridge_lambda(setup.noise))
    squared = {name: to_device((p - batch.target) ** 2, "numpy") for name, p in predictions.items()}
    model = squared["trained model"]
    root_n = math.sqrt(n_prompts)
    return {
        name: HeldOut(
            mse=float(numpy.mean(errors)),
            stderr=float(numpy.std(errors) / root_n),
            excess=float(numpy.mean(errors - model)),
            excess_stderr=float(numpy.std(errors - model) / root_n),
        )
        for name, errors in squared.items()
    }


# -- progress --------------------------------------------------------------------------


def progress_enabled(stream, quiet: bool = False) -> bool:
    """Whether to draw a live progress line: not quiet, a terminal, and not under CI."""
    if quiet or os.environ.get("CI"):
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class ProgressLine:
    """One status line rewritten in place with a carriage return, at most every 0.1 s."""

    def __init__(self, stream=None, enabled: bool = True, interval: float = 0.1):
        self.stream = sys.stderr if stream is None else stream
        self.enabled = enabled
        self.interval = interval
        self._last = -math.inf
        self._shown = False

    def update(self, text: str, force: bool = False) -> None:
        now = time.perf_counter()
        if not self.enabled or (not force and now - self._last < self.interval):
            return
        self._last = now
        self.stream.write("\r" + text + "\x1b[K")
        self.stream.flush()
        self._shown = True

    def clear(self) -> None:
        """Erase the line, e.g. before printing a permanent message."""
        if self._shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._shown = False


# -- the loop --------------------------------------------------------------------------


class History(NamedTuple):
    """What happened during training, as host NumPy arrays."""

    step: numpy.ndarray  # (S,) 1..S
    train_loss: numpy.ndarray  # (S,) the loss of each step's batch
    val_step: numpy.ndarray  # (V,) steps at which the held-out loss was measured (0 = before)
    val_loss: numpy.ndarray  # (V,) held-out MSE
    wall_time: numpy.ndarray  # (V,) seconds since the start of training


class Validation(NamedTuple):
    """One held-out measurement, as passed to the ``log`` callback of :func:`train`."""

    step: int
    train_loss: float  # mean training loss since the previous validation (nan at step 0)
    val_loss: float
    wall_time: float  # seconds since the start
    steps_per_second: float  # over the steps since the previous validation


class TrainResult(NamedTuple):
    params: ModelParams
    history: History


def _positive_int(name, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, numpy.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def train(
    config: TransformerConfig,
    params: ModelParams,
    optimizer: OptimizerSettings,
    steps: int,
    batch_size: int,
    n_context: int,
    d: int,
    seed: int = 0,
    noise: float = 0.0,
    val_every: int = 500,
    val_size: int = 2048,
    quiet: bool = False,
    log: Callable[[Validation], None] | None = None,
    stream=None,
) -> TrainResult:
    """Train ``params`` on fresh in-context regression prompts for ``steps`` steps.

    Prompts have ``n_context`` pairs in dimension ``d`` (so config.d_token must be d + 1)
    and are drawn from the seed ``seed``; the held-out batch of ``val_size`` prompts comes
    from an independent stream of the same seed. Data take the dtype, namespace and
    device of ``params``.

    Progress: a live line (step, loss, steps/s) on ``stream`` (default stderr) when it is
    a terminal, unless ``quiet`` or the CI environment variable is set; ``log`` (if given)
    is called with a :class:`Validation` at every held-out measurement.

    Raises TrainingDivergedError if the loss becomes NaN or infinite.
    Returns TrainResult(params, history).
    """
    steps = _positive_int("steps", steps)
    batch_size = _positive_int("batch_size", batch_size)
    val_every = _positive_int("val_every", val_every)
    val_size = _positive_int("val_size", val_size)
    if config.d_token != d + 1:
        raise ValueError(
            f"prompts in dimension d = {d} need config.d_token = {d + 1}, got {config.d_token}"
        )
    check_params(params, config)
    first = tree_leaves(params)[0][1]
    xp, dtype, device = namespace(first), first.dtype, array_device(first)
    train_seed, val_seed = numpy.random.SeedSequence(seed).spawn(2)

    val_batch = regression_prompts(
        val_size, n_context, d, numpy.random.default_rng(val_seed), noise, dtype, xp, device
    )
    stream_of_batches = regression_stream(
        batch_size, n_context, d, numpy.random.default_rng(train_seed), noise, dtype, xp, device
    )
    stream = sys.stderr if stream is None else stream
    progress = ProgressLine(stream, enabled=progress_enabled(stream, quiet))
    state = optimizer_init(optimizer, params)
    train_loss = numpy.empty(steps)
    val_step, val_loss, wall_time = [], [], []

    def validate(step, start, previous_step, previous_time):
        now = time.perf_counter() - start
        value = evaluate(params, config, val_batch)
        val_step.append(step)
        val_loss.append(value)
        wall_time.append(now)
        if log is not None:
            window = train_loss[previous_step:step]
            rate = (step - previous_step) / max(now - previous_time, 1e-12)
            mean = float(numpy.mean(window)) if step > 0 else math.nan
            progress.clear()
            log(Validation(step, mean, value, now, rate))
        return step, now

    smoothed = math.nan  # a moving average of the training loss, for the progress line
    pending = []  # the last few losses, still 0-d arrays on the device

    def flush(step, lr):
        """Read the pending losses (one transfer for several steps) and check them."""
        nonlocal smoothed
        values = to_device(xp.stack(pending), "numpy")
        train_loss[step - len(pending):step] = values
        pending.clear()
        if not numpy.all(numpy.isfinite(values)):
            progress.clear()
            bad = step - len(values) + int(numpy.argmin(numpy.isfinite(values))) + 1
            raise TrainingDivergedError(
                f"training diverged at step {bad}: loss {train_loss[bad - 1]}"
                f" (learning rate {lr:.3g}); lower the learning rate"
            )
        if progress.enabled:
            for value in values:
                smoothed = value if math.isnan(smoothed) else 0.98 * smoothed + 0.02 * value
            elapsed = time.perf_counter() - start
            progress.update(
                f"step {step}/{steps}  loss {smoothed:.4f} (moving average)"
                f"  {step / max(elapsed, 1e-12):.0f} steps/s",
                force=step == steps,
            )

    start = time.perf_counter()
    previous = validate(0, start, 0, 0.0)
    for step in range(1, steps + 1):
        batch = next(stream_of_batches)
        lr = optimizer.lr_at(step, steps)
        params, state, loss = train_step(params, state, config, batch, optimizer, lr)
        # The loss stays on the device; it is read every FLUSH_EVERY steps, not every step.
        pending.append(loss)
        if len(pending) == FLUSH_EVERY or step % val_every == 0 or step == steps:
            flush(step, lr)
        if step % val_every == 0 or step == steps:
            previous = validate(step, start, *previous)
    progress.clear()
    history = History(
        step=numpy.arange(1, steps + 1),
        train_loss=train_loss,
        val_step=numpy.asarray(val_step),
        val_loss=numpy.asarray(val_loss),
        wall_time=numpy.asarray(wall_time),
    )
    return TrainResult(params, history)


def train_setup(
    setup: TrainingSetup,
    seed: int = 0,
    dtype=numpy.float64,
    xp=None,
    device=None,
    quiet: bool = False,
    log: Callable[[Validation], None] | None = None,
    stream=None,
) -> TrainResult:
    """Initialise a model with ``seed`` and train it as ``setup`` says (data seed ``seed``)."""
    params = init_params(setup.config, seed=seed, dtype=dtype, xp=xp, device=device)
    return train(
        setup.config,
        params,
        setup.optimizer,
        setup.steps,
        setup.batch_size,
        setup.n_context,
        setup.d,
        seed=seed,
        noise=setup.noise,
        val_every=setup.val_every,
        val_size=setup.val_size,
        quiet=quiet,
        log=log,
        stream=stream,
    )


# -- the paper's setting ---------------------------------------------------------------


def paper_setting(fast: bool = False) -> TrainingSetup:
    """The setting of Dherin et al. (2025, section 4), with the choices the paper leaves open.

    Fixed by the paper: d = 2 (tokens of width 3), N = 50 context pairs and one query,
    w, x_i, x_query ~ N(0, I), noiseless labels; ONE block of softmax self-attention
    followed by an MLP, no skip connections, no LayerNorm; the prediction is the last
    coordinate of the output at the query.

    Our choices (the paper publishes none), measured on a 2-core CPU (test MSEs below are
    on 8 192 held-out prompts, where one step of GD scores 0.1095):
        heads H = 8 of width K = 2: many narrow heads. With no skip connection the MLP
            sees only the attention output, a 3-vector, so every statistic of the context
            must come out of softmax averages; more heads give more differently weighted
            averages. Four heads of width 8 reached 0.088 for two seeds but stayed at
            0.106 (the one-step-GD level) for the third; eight heads of width 4 reached
            0.087 for all three seeds, and width 2 as well for less work per step (keys
            and values are (B, T, H·K)).
        MLP width M = 128, ReLU: wider than the task needs and cheap (the MLP runs at the
            query only). GELU was slower to train in a side-by-side run (0.106 against
            0.098 for ReLU after 20 000 steps at lr 2e-3).
        Adam, lr 8e-3, 200 warm-up steps, cosine decay to 1 %: lr 2e-3 and 4e-3 reached
            0.098 and 0.089 in the same 20 000 steps, 8e-3 0.088.
        batch 64, 20 000 steps, fresh prompts every step (1.28 M prompts): about 2.5 ms
            a step (forward at the query only, backward, Adam; data ~0.2 ms), so about
            50 s of one core. Batch 128 for 12 000 steps (1.5 M prompts, a step costs
            twice as much) reached the same error as batch 64 for 20 000.
        held-out loss every 2 000 steps on 4 096 prompts.

    What it gives, on 10 000 new prompts per seed (mean squared error ± standard error):

        seed   trained model     one step of GD (η*)   GD − model, same prompts
        0      0.0914 ± 0.0028   0.1113 ± 0.0034       +0.0199 ± 0.0019
        1      0.0915 ± 0.0034   0.1161 ± 0.0038       +0.0246 ± 0.0020
        2      0.0910 ± 0.0035   0.1083 ± 0.0033       +0.0174 ± 0.0025

    (53 s of training for seed 0.) The model beats the zero predictor (MSE ≈ d = 2) and
    one step of GD with the optimal step η* = 1/(1 + 3/50) (expected MSE
    d(d+1)/(N+d+1) = 0.113) by about 18 %, but not least squares (MSE 0 on noiseless
    prompts with N ≥ d), which needs the inverse of the context's covariance: one softmax
    layer whose MLP sees a 3-vector cannot form it.

    ``fast=True``: 300 steps, for smoke tests (about a second).
    """
    config = TransformerConfig(
        d_token=3,
        n_blocks=1,
        n_heads=8,
        d_head=2,
        d_mlp=128,
        attention="softmax",
        activation="relu",
        causal=False,
        attn_skip=False,
        mlp_skip=False,
        layer_norm=False,
    )
    optimizer = OptimizerSettings(
        name="adam", lr=8e-3, schedule="cosine", warmup_steps=200, final_lr_fraction=0.01
    )
    setup = TrainingSetup(
        config=config,
        optimizer=optimizer,
        steps=20_000,
        batch_size=64,
        n_context=50,
        d=2,
        noise=0.0,
        val_every=2000,
        val_size=4096,
    )
    if fast:
        setup = replace(setup, steps=300, val_every=100, val_size=512)
    return setup
