"""Training on in-context linear regression: the loop, its settings, and the paper's setting.

One step, on a fresh batch of prompts (never repeated), in textbook form:

    out, cache = forward(params, config, tokens, last_only=True)   # the query row only
    loss, dout = query_loss(out, target)
    _, grads   = backward(dout, cache)
    params, state = adam_step(params, grads, state, lr)             # or sgd_step

``train_step`` computes the same numbers, to rounding, with the speed modules:
``model_fast.query_loss_and_grads`` and ``optim_fast.adam_step_fast``.

Before the first step, every ``val_every`` steps and after the last step the loss on a
fixed held-out batch is recorded. The result is the final parameters and a
:class:`History` of NumPy arrays (host memory, ready for a checkpoint or a plot). A
``callback`` receives a :class:`Report` (the parameters, the losses so far) whenever the losses are read back from the device: every ``FLUSH_EVERY``
steps since the last read-back and at every held-out measurement. The command line draws
its progress line from it, the experiments measure more on the parameters.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, replace
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
from .heap import keep_freed_memory
from .model import predict
from .model_fast import query_loss_and_grads
from .optim import adam_init, adam_step, sgd_init, sgd_step
from .optim_fast import adam_step_fast
from .params import ModelParams, init_params
from .validation import (
    check_batch,
    check_bool,
    check_callback,
    check_config,
    check_non_negative,
    check_optimizer_settings,
    check_params,
    check_positive_int,
    check_record_dict,
    check_seed,
    check_token_width,
    check_tokens,
    check_training_setup,
)

OPTIMIZERS = ("adam", "sgd")
FLUSH_EVERY = 50  # training losses are read back to the host this many steps at a time
SCHEDULES = ("constant", "cosine")


class TrainingDivergedError(ValueError):
    """The training loss became NaN or infinite."""


# -- settings --------------------------------------------------------------------------


@dataclass(frozen=True)
class OptimizerSettings:
    """Which optimiser, and its learning-rate schedule.

    lr(t) for step t = 1..``steps``: a linear warm-up from lr/warmup_steps to lr over the
    first ``warmup_steps`` steps, then ``"constant"``, or ``"cosine"`` decay from lr (at
    t = warmup_steps) down to lr · final_lr_fraction at the last step.
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
        for field, value in check_optimizer_settings(self, OPTIMIZERS, SCHEDULES).items():
            object.__setattr__(self, field, value)  # a NumPy scalar becomes a Python number

    def lr_at(self, step: int, total_steps: int) -> float:
        """The learning rate of step ``step`` (1-based) out of ``total_steps``: ints with
        1 ≤ step ≤ total_steps (step 0 or −1 gave a zero or negative rate in warmup)."""
        total_steps = check_positive_int("total_steps", total_steps)
        step = check_positive_int("step", step)
        if step > total_steps:
            raise ValueError(f"step must be in [1, total_steps = {total_steps}], got {step}")
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
    """Everything that defines a training run except the seed. Every field is checked on
    creation (a ValueError or TypeError naming it): config a TransformerConfig, optimizer
    an OptimizerSettings, steps, batch_size, n_context, d, val_every and val_size positive
    ints, config.d_token = d + 1, noise finite ≥ 0."""

    config: TransformerConfig
    optimizer: OptimizerSettings
    steps: int
    batch_size: int
    n_context: int
    d: int
    noise: float = 0.0
    val_every: int = 500
    val_size: int = 2048

    def __post_init__(self):
        for field, value in check_training_setup(self, OptimizerSettings).items():
            object.__setattr__(self, field, value)  # a NumPy scalar becomes a Python number

    def to_dict(self) -> dict:
        """The setup as nested plain dicts ("config" and "optimizer" included), JSON-ready."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TrainingSetup:
        """The inverse of :meth:`to_dict`. A ValueError names the missing and the unknown
        keys (of the setup, its "config" or its "optimizer"), a TypeError a part that is
        not a dict."""
        fields = tuple(cls.__dataclass_fields__)
        required = tuple(f for f in fields if cls.__dataclass_fields__[f].default is MISSING)
        values = check_record_dict("TrainingSetup", values, fields, required)
        config = check_record_dict(
            "TrainingSetup.config", values["config"], tuple(TransformerConfig.__dataclass_fields__))
        optimizer = check_record_dict(
            "TrainingSetup.optimizer", values["optimizer"],
            tuple(OptimizerSettings.__dataclass_fields__))
        values["config"] = TransformerConfig.from_dict(config)
        values["optimizer"] = OptimizerSettings(**optimizer)
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

    The loss and gradients come from ``model_fast.query_loss_and_grads`` (the same
    numbers as ``forward(..., last_only=True)``, ``query_loss`` and ``backward`` to
    rounding, by fewer and larger array operations; the textbook pass for configurations
    it does not cover), and Adam from ``optim_fast.adam_step_fast`` (bit for bit
    ``adam_step``). The first call sets glibc's heap to keep freed memory
    (``heap.keep_freed_memory``), so that freed arrays are reused from the first step.

    Returns (params, state, loss) with loss a 0-d array (``float(loss)`` reads it).
    """
    keep_freed_memory()  # once per process: freed arrays stay in the heap (minimal_icl.heap)
    # The loss reads only the query position, so the last block computes that row only.
    # No read-back per step: the training loop checks the losses it reads (divergence).
    loss, grads = query_loss_and_grads(params, config, batch.tokens, batch.target)
    if optimizer.name == "adam":
        params, state = adam_step_fast(
            params, grads, state, lr, optimizer.beta1, optimizer.beta2, optimizer.eps
        )
    else:
        params, state = optimizer_step(optimizer, params, grads, state, lr)
    return params, state, loss


def _check_setup(setup) -> TrainingSetup:
    """``setup``, or a TypeError unless it is a TrainingSetup (a dict: TrainingSetup.from_dict)."""
    if not isinstance(setup, TrainingSetup):
        raise TypeError(
            f"setup must be a TrainingSetup, got {type(setup).__name__}"
            + ("; build one from a dict with TrainingSetup.from_dict" if isinstance(setup, dict)
               else "")
        )
    return setup


def predict_in_chunks(params, config: TransformerConfig, tokens, chunk: int = 1024):
    """``predict`` over (B, T, D) tokens, ``chunk`` prompts at a time (bounded memory); (B,)."""
    chunk = check_positive_int("chunk", chunk)
    check_tokens(tokens, check_config(config))  # the rest is checked by predict, per chunk
    xp = namespace(tokens)
    B = tokens.shape[0]
    return xp.concat(
        [predict(params, config, tokens[i : min(i + chunk, B), ...]) for i in range(0, B, chunk)]
    )


def evaluate(params, config: TransformerConfig, batch: RegressionBatch) -> float:
    """The model's mean squared error on ``batch``."""
    check_batch(batch)
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
    λ = σ²/τ² = σ² if σ > 0: the prompts' prior is w ~ N(0, I), τ = 1). ``excess``
    compares each row with the model prompt by prompt: its standard error is below
    √(stderr² + the model's stderr²), what two independent estimates would give, wherever
    the two squared errors are positively correlated across prompts (the variance of a
    difference is the sum of the variances less twice their covariance).
    """
    setup = _check_setup(setup)
    check_params(params, setup.config)
    seed = check_seed(seed)
    n_prompts = check_positive_int("n_prompts", n_prompts)
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


# -- the loop --------------------------------------------------------------------------


class History(NamedTuple):
    """What happened during training, as host NumPy arrays."""

    step: numpy.ndarray  # (steps,) 1..steps
    train_loss: numpy.ndarray  # (steps,) the loss of each step's batch
    val_step: numpy.ndarray  # (V,) steps at which the held-out loss was measured (0 = before)
    val_loss: numpy.ndarray  # (V,) held-out MSE
    wall_time: numpy.ndarray  # (V,) seconds since the start of training


class Report(NamedTuple):
    """What :func:`train` passes to its ``callback``: the run after ``step`` steps."""

    step: int  # steps done (0: before the first step)
    steps: int  # steps of the whole run
    params: ModelParams  # the parameters after ``step`` steps
    train_loss: numpy.ndarray  # (step,) the loss of each step so far, host memory
    val_loss: float | None  # held-out MSE of ``params`` at a held-out measurement, else None
    wall_time: float  # seconds since the start of training


class TrainResult(NamedTuple):
    """What :func:`train` returns: the parameters after the last step and the history."""

    params: ModelParams
    history: History


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
    callback: Callable[[Report], None] | None = None,
) -> TrainResult:
    """Train ``params`` on fresh in-context regression prompts for ``steps`` steps.

    Prompts have ``n_context`` pairs in dimension ``d`` (so config.d_token must be d + 1)
    and are drawn from the seed ``seed``; the held-out batch of ``val_size`` prompts comes
    from an independent stream of the same seed. Data take the dtype, namespace and
    device of ``params``.

    ``callback`` (if given) receives a :class:`Report` at step 0, whenever the losses are
    read back from the device (``FLUSH_EVERY`` steps after the previous read-back, so at
    steps 50, 70, 120, 140, ... for ``val_every`` = 70), at every held-out measurement
    (``val_every`` steps, ``val_loss`` set) and after the last step. It may read the
    parameters; it must not change them.

    Raises TrainingDivergedError if the loss becomes NaN or infinite.
    Returns TrainResult(params, history).
    """
    check_callback(callback)
    steps = check_positive_int("steps", steps)
    batch_size = check_positive_int("batch_size", batch_size)
    n_context = check_positive_int("n_context", n_context)
    val_every = check_positive_int("val_every", val_every)
    val_size = check_positive_int("val_size", val_size)
    seed = check_seed(seed)
    noise = check_non_negative("noise", noise)
    check_token_width(config, d)
    check_params(params, config)
    if not isinstance(optimizer, OptimizerSettings):
        raise TypeError(f"optimizer must be an OptimizerSettings, got {type(optimizer).__name__}")
    first = tree_leaves(params)[0][1]
    xp, dtype, device = namespace(first), first.dtype, array_device(first)
    train_seed, val_seed = numpy.random.SeedSequence(seed).spawn(2)
    try:  # before any work: one float per step is recorded
        train_loss = numpy.empty(steps)
    except (ValueError, MemoryError):  # beyond NumPy's largest array, or the memory
        raise ValueError(
            f"steps = {steps}: the record of one loss per step ({steps} floats) cannot be"
            " allocated"
        ) from None

    val_batch = regression_prompts(
        val_size, n_context, d, numpy.random.default_rng(val_seed), noise, dtype, xp, device
    )
    batches = regression_stream(
        batch_size, n_context, d, numpy.random.default_rng(train_seed), noise, dtype, xp, device
    )
    state = optimizer_init(optimizer, params)
    val_step, val_loss, wall_time = [], [], []
    pending = []  # the losses of the last steps, still 0-d arrays on the device
    start = time.perf_counter()

    def report(step: int, held_out: bool) -> None:
        now = time.perf_counter() - start
        value = None
        if held_out:
            value = evaluate(params, config, val_batch)
            val_step.append(step)
            val_loss.append(value)
            wall_time.append(now)
        if callback is not None:
            callback(Report(step, steps, params, train_loss[:step], value, now))

    report(0, held_out=True)
    for step in range(1, steps + 1):
        lr = optimizer.lr_at(step, steps)
        # a diverging run overflows: _check_finite below names it, without NumPy's warnings
        with numpy.errstate(over="ignore", invalid="ignore", divide="ignore"):
            params, state, loss = train_step(params, state, config, next(batches), optimizer, lr)
        pending.append(loss)
        held_out = step % val_every == 0 or step == steps
        if len(pending) == FLUSH_EVERY or held_out:
            # one transfer for several steps: no host synchronisation in every step
            first_step = step - len(pending) + 1
            train_loss[first_step - 1 : step] = to_device(xp.stack(pending), "numpy")
            pending.clear()
            _check_finite(train_loss[first_step - 1 : step], first_step, optimizer, steps)
            report(step, held_out)
    history = History(
        step=numpy.arange(1, steps + 1),
        train_loss=train_loss,
        val_step=numpy.asarray(val_step),
        val_loss=numpy.asarray(val_loss),
        wall_time=numpy.asarray(wall_time),
    )
    return TrainResult(params, history)


def _check_finite(losses: numpy.ndarray, first_step: int, optimizer, steps: int) -> None:
    """TrainingDivergedError naming the first step whose loss is NaN or infinite."""
    bad = numpy.flatnonzero(~numpy.isfinite(losses))
    if bad.size:
        step = first_step + int(bad[0])
        raise TrainingDivergedError(
            f"training diverged at step {step}: loss {losses[bad[0]]}"
            f" (learning rate {optimizer.lr_at(step, steps):.3g}); lower the learning rate"
        )


def train_setup(
    setup: TrainingSetup,
    seed: int = 0,
    dtype=numpy.float64,
    xp=None,
    device=None,
    callback: Callable[[Report], None] | None = None,
) -> TrainResult:
    """Initialise a model with ``seed`` and train it as ``setup`` says (data seed ``seed``)."""
    setup = _check_setup(setup)
    check_callback(callback)
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
        callback=callback,
    )


# -- the paper's setting ---------------------------------------------------------------


def paper_setting(fast: bool = False) -> TrainingSetup:
    """The setting of Dherin et al. (2025, section 4), completed by choices of our own.

    Fixed by the paper: d = 2 (tokens of width 3), N = 50 context pairs and one query,
    w, x_j, x_q ~ N(0, I), noiseless labels; ONE block of softmax self-attention
    followed by an MLP, no MLP skip, no LayerNorm; the prediction is the last
    coordinate of the output at the query.

    Our choices (not taken from the paper; the runs behind them and the errors the
    trained model reaches are in docs/paper_setting.md):
        no attention skip either (the block of Theorem 2.2: the MLP reads A(C, x) alone;
        we have not confirmed what the paper's experiment uses);
        attention: H = 8 heads of width K = 2;
        MLP: width M = 128, ReLU;
        Adam, lr 8e-3, 200 warm-up steps, cosine decay to 1 % of lr;
        batch 64, 20 000 steps, fresh prompts every step (1.28 M prompts);
        held-out loss every 2 000 steps on 4 096 prompts.

    ``fast=True``: 300 steps, the held-out loss every 100 steps on 512 prompts, for smoke
    tests (about 0.2 s of training on one core).
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
    if check_bool("fast", fast):
        setup = replace(setup, steps=300, val_every=100, val_size=512)
    return setup
