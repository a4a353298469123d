"""Every bad input gets a ValueError or a TypeError that names the argument and the problem.

One battery, parametrised: each case is a call with one thing wrong, the exception class
it must raise (never an AttributeError, IndexError, broadcasting error from inside, NaN
or a silent wrong answer), and a pattern the message must contain: the argument's name
and the problem. The kinds: parameters that do not match the configuration (forward,
predict, backward, the optimisers, patches, the theorems, save_checkpoint, train),
dtypes, optimiser settings, ``removed`` and ``seed``, overflow and subnormal tokens,
CuPy where it cannot run, files. docs/validation.md lists what each entry point checks.
"""

from __future__ import annotations

import importlib
import json
import re
import sys
import types
import warnings
from typing import NamedTuple

import numpy
import pytest
from backends import gpu_available

from minimal_icl import (
    IDENTITY_RTOL,
    BlockPatch,
    ModelParams,
    OptimizerSettings,
    TransformerConfig,
    adam_init,
    adam_step,
    at_position,
    backward,
    compression_error,
    factorised_path,
    forward,
    gradcheck,
    implicit_path,
    implicit_update,
    implicit_update_every_position,
    implicit_update_from_last_token,
    init_params,
    least_squares_predict,
    linattn,
    linear_attention_context_vector,
    load_checkpoint,
    minimum_norm_solution,
    null_space_perturbation,
    one_step_gd_predict,
    position_alignment,
    predict,
    prompt_tokens,
    query_loss,
    relative_residual,
    remove_tokens,
    save_checkpoint,
    sgd_init,
    sgd_step,
    thought_patch,
    to_device,
    tree_leaves,
    tree_map,
    von_oswald_attention,
    von_oswald_model,
    von_oswald_predict,
    zero_predict,
)
from minimal_icl import backend as backend_module
from minimal_icl.activations import activation_forward
from minimal_icl.backend import BackendUnavailableError, require_cupy, resolve_namespace
from minimal_icl.checkpoint import FORMAT
from minimal_icl.data import (
    RegressionBatch,
    regression_prompts,
    regression_stream,
    ridge_lambda,
    ridge_predict,
)
from minimal_icl.dynamics import prefix_states
from minimal_icl.experiments import ExperimentError, Progress, reproduce, run_figure
from minimal_icl.experiments import finetune as finetune_figure
from minimal_icl.experiments import identity as identity_figure
from minimal_icl.experiments import linattn_dynamics as linear_dynamics
from minimal_icl.experiments import models as experiment_models
from minimal_icl.experiments import order as order_figure
from minimal_icl.experiments import positions as positions_figure
from minimal_icl.experiments import thought as thought_figure
from minimal_icl.experiments.common import (
    cos_frobenius,
    heldout_table,
    loglog_slope,
    mean_se,
    moving_average,
    task_rng,
)
from minimal_icl.optim import unflatten
from minimal_icl.train import (
    TrainingSetup,
    compare_with_baselines,
    evaluate,
    paper_setting,
    predict_in_chunks,
    train,
    train_setup,
)

STACK = TransformerConfig(
    d_token=3, n_blocks=2, n_heads=2, d_head=2, d_mlp=5, layer_norm=True, attn_skip=True,
    mlp_skip=True,
)
ONE = TransformerConfig(d_token=3, n_blocks=1, n_heads=2, d_head=2, d_mlp=5)
_RNN = TransformerConfig(d_token=3, n_blocks=1, d_mlp=5, d_state=4, contextual_layer="rnn")
ONE_LN = TransformerConfig(d_token=3, n_blocks=1, n_heads=2, d_head=2, d_mlp=5, layer_norm=True,
                           attn_skip=True, mlp_skip=True)


def _one_layernorm() -> ModelParams:
    """One pre-LN block: a LayerNorm whose variance overflows maps its input to 0, so the
    paths' vectors come out zero and the error must name the overflow, not a zero query."""
    return init_params(ONE_LN, seed=0)


class World(NamedTuple):
    """What the cases call with: a two-block model, a one-block model and prompts."""

    params: ModelParams  # for STACK
    one: ModelParams  # for ONE
    tokens: numpy.ndarray  # (4, 6, 3)
    context: numpy.ndarray  # (4, 5, 3)
    query: numpy.ndarray  # (4, 3)
    patches: tuple  # implicit_update(params, STACK, context, query)
    tmp: object  # a temporary folder (pathlib.Path)
    batch: RegressionBatch  # the prompts of tokens, context and query
    target: numpy.ndarray  # (4,)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    params = init_params(STACK, seed=0)
    batch = regression_prompts(4, 5, 2, seed=1)
    patches = implicit_update(params, STACK, batch.context, batch.query)
    return World(
        params, init_params(ONE, seed=0), batch.tokens, batch.context, batch.query, patches,
        tmp_path_factory.mktemp("errors"), batch, batch.target,
    )


def _every(w: World, T: int = 6):
    """implicit_update_every_position of the one-block model on the first T tokens."""
    return implicit_update_every_position(w.one, ONE, w.tokens[:, :T])


def _block(w: World, l: int = 1, **parts):
    """w.params with block ``l``'s records changed: parts like attn={"W_Q": array}."""
    block = w.params.blocks[l]
    for part, fields in parts.items():
        record = getattr(block, part)
        block = block._replace(**{part: None if fields is None else record._replace(**fields)})
    blocks = list(w.params.blocks)
    blocks[l] = block
    return ModelParams(blocks=tuple(blocks))


def _set(tree, fn):
    return tree_map(fn, tree)


def _other(**fields) -> TransformerConfig:
    return TransformerConfig(**{**STACK.to_dict(), **fields})


def _lm(w, **kwargs):
    return forward(w.params, STACK, w.tokens, last_only=True, check_finite=False)


def _patch(w, **fields):
    return (w.patches[0]._replace(**fields), None)


def _setup() -> TrainingSetup:
    """A small training setup for the one-block model ONE (d = 2, so d_token = 3)."""
    return TrainingSetup(ONE, OptimizerSettings(), steps=1, batch_size=4, n_context=5, d=2)


def _stored(w, **fields):
    """A checkpoint of the one-block model whose stored configuration says ``fields``."""
    path = w.tmp / f"stored-{'-'.join(fields)}.npz"
    arrays = {"format": numpy.asarray(FORMAT),
              "config": numpy.asarray(json.dumps({**ONE.to_dict(), **fields}))}
    arrays.update({f"params/{name}": a for name, a in tree_leaves(w.one)})
    numpy.savez(path, **arrays)
    return path


def _grads(w):
    out, cache = forward(w.params, STACK, w.tokens, last_only=True)
    return backward(numpy.ones_like(out), cache)[1]


def _saved(w) -> str:
    """A checkpoint of the one-block model, saved under a bytes path."""
    path = str(w.tmp / "one.npz")
    save_checkpoint(path.encode(), w.one, ONE)
    return path


def _lone(w):
    """The one-block model's MLP inputs and residuals of the context tokens alone."""
    return finetune_figure.lone_token_inputs(w.one, ONE, w.batch.context_x)


def _with_entry(w, **entries) -> str:
    """The one-block model's checkpoint with ``entries`` added to the archive."""
    path = _saved(w)
    with numpy.load(path) as archive:
        arrays = {key: archive[key] for key in archive.files}
    numpy.savez(path, **{**arrays, **entries})
    return path


def _exercise(number: int):
    """The module of tutorial ``number``'s exercise checks."""
    return importlib.import_module(f"minimal_icl.exercises.tutorial_{number:02d}")


def _unwritten(*args, **kwargs):
    """A reader's function not written yet; a check refusing its own arguments never calls it."""
    raise NotImplementedError


# (id, call, exception class, pattern the message must match: the argument and the problem)
def _blocked_models(w):
    """A folder holding a file "afile" and a folder where deep_model.npz would go."""
    folder = w.tmp / "models"
    (folder / "deep_model.npz").mkdir(parents=True, exist_ok=True)
    (folder / "afile").write_text("")
    return folder


CASES = [
    # -- parameters that do not match the configuration -------------------------------
    ("forward-fewer-blocks", lambda w: forward(w.one, STACK, w.tokens), ValueError,
     r"params must be a ModelParams with 2 blocks.*1 blocks"),
    ("forward-more-blocks", lambda w: forward(w.params, ONE, w.tokens), ValueError,
     r"params must be a ModelParams with 1 blocks.*2 blocks"),
    ("predict-other-head-width", lambda w: predict(w.params, _other(d_head=3), w.tokens),
     ValueError, r"W_Q has shape \(4, 3\), config expects \(6, 3\) = \(n_heads·d_head"),
    ("predict-other-head-count", lambda w: predict(w.params, _other(n_heads=3), w.tokens),
     ValueError, r"params\.blocks\[0\]\.attn\.W_Q"),
    ("predict-other-mlp-width", lambda w: predict(w.params, _other(d_mlp=7), w.tokens),
     ValueError, r"W1 has shape \(5, 3\), config expects \(7, 3\)"),
    ("forward-missing-layernorm", lambda w: forward(_block(w, ln1=None), STACK, w.tokens),
     ValueError, r"block 1: ln1 is None but config\.layer_norm = True"),
    ("forward-extra-layernorm", lambda w: forward(w.params, _other(layer_norm=False), w.tokens),
     ValueError, r"ln1 is set but config\.layer_norm = False"),
    ("forward-params-tuple", lambda w: forward(tuple(w.params.blocks), STACK, w.tokens),
     ValueError, r"params must be a ModelParams"),
    ("forward-block-not-a-record", lambda w: forward(ModelParams((w.params.blocks[0], 3)),
     STACK, w.tokens), ValueError, r"params\.blocks\[1\] must be a BlockParams"),
    ("forward-W_O-transposed", lambda w: forward(
        _block(w, attn={"W_O": w.params.blocks[1].attn.W_O.T}), STACK, w.tokens),
     ValueError, r"block 1: W_O has shape \(4, 3\), config expects \(3, 4\)"),
    ("forward-b1-shape", lambda w: forward(_block(w, mlp={"b1": numpy.zeros(4)}), STACK,
     w.tokens), ValueError, r"block 1: b1 has shape \(4,\)"),
    ("forward-ln-gain-shape", lambda w: forward(_block(w, ln2={"gain": numpy.ones(4)}), STACK,
     w.tokens), ValueError, r"ln2\.gain has shape \(4,\)"),
    ("forward-int-params", lambda w: forward(_set(w.params, lambda a: a.astype(numpy.int64)),
     STACK, w.tokens), TypeError, r"params\.blocks\[0\]\.attn\.W_Q: dtype int64 is refused"),
    ("forward-complex-params", lambda w: forward(_set(w.params, lambda a: a.astype(complex)),
     STACK, w.tokens), TypeError, r"params\.blocks\[0\]\.attn\.W_Q: dtype complex128"),
    ("forward-mixed-param-dtypes", lambda w: forward(_block(w, mlp={
        "W2": w.params.blocks[1].mlp.W2.astype(numpy.float32)}), STACK, w.tokens),
     TypeError, r"params\.blocks\[1\]\.mlp\.W2 has dtype float32"),
    ("forward-params-lists", lambda w: forward(_block(w, mlp={
        "b2": [0.0, 0.0, 0.0]}), STACK, w.tokens), ValueError, r"block 1: b2 has shape None"),
    ("save-mismatched-params", lambda w: save_checkpoint(w.tmp / "m.npz", w.one, STACK),
     ValueError, r"params must be a ModelParams with 2 blocks"),
    ("implicit-update-mismatch", lambda w: implicit_update(w.one, STACK, w.context, w.query),
     ValueError, r"params must be a ModelParams with 2 blocks"),
    ("implicit-path-mismatch", lambda w: implicit_path(w.one, _other(n_blocks=1, d_mlp=4),
     w.context, w.query), ValueError, r"W1 has shape \(5, 3\), config expects \(4, 3\)"),
    ("factorised-path-mismatch", lambda w: factorised_path(w.params, STACK, w.context, w.query),
     ValueError, r"factorised_path is stated for one contextual block"),
    ("train-mismatch", lambda w: train(STACK, w.one, OptimizerSettings(), 2, 4, 5, 2),
     ValueError, r"params must be a ModelParams with 2 blocks"),
    ("sgd-grads-of-other-model", lambda w: sgd_step(w.params, w.one, sgd_init(w.params), 0.1),
     ValueError, r"grads\.blocks has 1 entries but params\.blocks has 2"),
    ("adam-grads-other-shape", lambda w: adam_step(w.params, _block(
        w, mlp={"W1": numpy.zeros((5, 2))}), adam_init(w.params), 0.1),
     ValueError, r"grads\.blocks\.1\.mlp\.W1 has shape \(5, 2\) but params"),
    ("adam-grads-without-layernorm", lambda w: adam_step(w.params, _block(w, ln1=None),
     adam_init(w.params), 0.1), ValueError, r"grads\.blocks\.1\.ln1 is None but params"),
    ("adam-state-of-other-params", lambda w: adam_step(w.params, w.params, adam_init(w.one),
     0.1), ValueError, r"state\.m has shape \(\d+,\) but params hold"),
    ("adam-state-not-a-state", lambda w: adam_step(w.params, w.params, None, 0.1),
     TypeError, r"state must be the AdamState"),
    ("sgd-velocity-of-other-params", lambda w: sgd_step(w.params, w.params, sgd_init(w.one, 0.5),
     0.1, momentum=0.5), ValueError, r"state\.velocity\.blocks has 1 entries"),
    ("sgd-momentum-without-state", lambda w: sgd_step(w.params, w.params, sgd_init(w.params),
     0.1, momentum=0.5), ValueError, r"momentum > 0 needs a state"),
    ("adam-int-grads", lambda w: adam_step(w.params, _set(w.params, lambda a: a.astype(int)),
     adam_init(w.params), 0.1), TypeError, r"grads\.blocks\.0\.attn\.W_Q: dtype int64"),
    ("adam-init-int-params", lambda w: adam_init(_set(w.params, lambda a: a.astype(int))),
     TypeError, r"params\.blocks\.0\.attn\.W_Q: dtype int64"),
    # -- patches ----------------------------------------------------------------------------
    ("patches-single-update", lambda w: predict(w.params, STACK, w.tokens[:, -1:],
     patches=w.patches[0]), ValueError, r"patches must hold one entry per block \(2\), got a"
     r" single ImplicitUpdate"),
    ("patches-too-few", lambda w: predict(w.params, STACK, w.tokens, patches=w.patches[:1]),
     ValueError, r"patches must hold one entry per block \(2\), got 1"),
    ("patches-delta_W-shape", lambda w: predict(w.params, STACK, w.tokens, patches=_patch(
        w, delta_W=w.patches[0].delta_W[:2])), ValueError,
     r"patch for block 0: delta_W has shape \(2, 5, 3\), expected \(4, 5, 3\)"),
    ("patches-delta_b-shared", lambda w: predict(w.params, STACK, w.tokens, patches=_patch(
        w, delta_b=w.patches[0].delta_b[0])), ValueError, r"delta_b has shape \(3,\)"),
    ("patches-entry-array", lambda w: predict(w.params, STACK, w.tokens,
     patches=(w.patches[0].delta_W, None)), TypeError, r"patches\[0\] must be None, a BlockPatch"),
    ("patches-complex", lambda w: predict(w.params, STACK, w.tokens, patches=_patch(
        w, delta_W=w.patches[0].delta_W.astype(complex))), TypeError,
     r"patches\[0\]\.delta_W: dtype complex128"),
    ("patches-not-a-tuple", lambda w: predict(w.params, STACK, w.tokens, patches="patch"),
     TypeError, r"patches must be None or a tuple"),
    # -- backward ------------------------------------------------------------------------
    ("backward-dout-shape", lambda w: backward(numpy.ones((4, 6, 3)), _lm(w)[1]), ValueError,
     r"dout must have the shape of forward's output, \(4, 1, 3\) \(last_only\)"),
    ("backward-dout-list", lambda w: backward([1.0], _lm(w)[1]), ValueError,
     r"dout must have the shape"),
    ("backward-no-cache", lambda w: backward(numpy.ones((4, 1, 3)), None), TypeError,
     r"cache must be the ModelCache"),
    ("backward-int-dout", lambda w: backward(numpy.ones((4, 1, 3), dtype=int), _lm(w)[1]),
     TypeError, r"dout: dtype int64"),
    # -- dtypes of data ----------------------------------------------------------------------
    ("prompts-int32", lambda w: regression_prompts(4, 5, 2, dtype=numpy.int32), TypeError,
     r"dtype must be a real floating-point type.*integers would truncate"),
    ("prompts-complex", lambda w: regression_prompts(4, 5, 2, dtype="complex128"), TypeError,
     r"dtype must be a real floating-point type.*complex"),
    ("prompts-not-a-dtype", lambda w: regression_prompts(4, 5, 2, dtype="float65"), TypeError,
     r"dtype 'float65' is not a dtype"),
    ("stream-int64", lambda w: regression_stream(4, 5, 2, dtype="int64"), TypeError,
     r"dtype must be a real floating-point type"),
    ("init-int32", lambda w: init_params(STACK, dtype="int32"), TypeError,
     r"dtype must be a real floating-point type"),
    ("init-bool", lambda w: init_params(STACK, dtype=numpy.bool_), TypeError,
     r"dtype must be a real floating-point type.*booleans"),
    ("forward-int-tokens", lambda w: forward(w.params, STACK, w.tokens.astype(numpy.int32)),
     TypeError, r"tokens: dtype int32 is refused"),
    ("forward-complex-tokens", lambda w: forward(w.params, STACK, w.tokens + 0j), TypeError,
     r"tokens: dtype complex128 is refused"),
    ("forward-token-list", lambda w: forward(w.params, STACK, w.tokens.tolist()), ValueError,
     r"tokens must have shape \(B, T, d_token\), got shape None: not an array \(numpy.asarray"),
    ("forward-token-width", lambda w: forward(w.params, STACK, w.tokens[..., :2]), ValueError,
     r"tokens have width 2 but config\.d_token = 3"),
    ("implicit-int-context", lambda w: implicit_update(w.params, STACK,
     w.context.astype(int), w.query), TypeError, r"context: dtype int64 is refused"),
    ("implicit-complex-query", lambda w: implicit_update(w.params, STACK, w.context,
     w.query + 0j), TypeError, r"query: dtype complex128 is refused"),
    ("context-query-dtypes-differ", lambda w: implicit_update(w.params, STACK,
     w.context.astype(numpy.float32), w.query), TypeError,
     r"context \(float32\) and query \(float64\) must share a dtype"),
    ("path-dtypes-differ", lambda w: implicit_path(w.one, ONE, w.context,
     w.query.astype(numpy.float32)), TypeError, r"context \(float64\) and query \(float32\)"),
    # -- optimiser settings ---------------------------------------------------------------
    ("adam-eps-zero", lambda w: adam_step(w.params, w.params, adam_init(w.params), 0.1, eps=0.0),
     ValueError, r"eps must be a finite float > 0, got 0\.0"),
    ("adam-eps-nan", lambda w: adam_step(w.params, w.params, adam_init(w.params), 0.1,
     eps=float("nan")), ValueError, r"eps must be a finite float > 0, got nan"),
    ("adam-eps-negative", lambda w: adam_step(w.params, w.params, adam_init(w.params), 0.1,
     eps=-1e-8), ValueError, r"eps must be a finite float > 0"),
    ("adam-beta1-one", lambda w: adam_step(w.params, w.params, adam_init(w.params), 0.1,
     beta1=1.0), ValueError, r"beta1 must be a number in \[0, 1\), got 1\.0"),
    ("adam-beta2-negative", lambda w: adam_step(w.params, w.params, adam_init(w.params), 0.1,
     beta2=-0.1), ValueError, r"beta2 must be a number in \[0, 1\)"),
    ("adam-beta1-nan", lambda w: adam_step(w.params, w.params, adam_init(w.params), 0.1,
     beta1=float("nan")), ValueError, r"beta1 must be a number in \[0, 1\), got nan"),
    ("adam-lr-inf", lambda w: adam_step(w.params, w.params, adam_init(w.params),
     float("inf")), ValueError, r"learning rate lr must be a finite float"),
    ("sgd-momentum-one", lambda w: sgd_init(w.params, momentum=1.0), ValueError,
     r"momentum must be a number in \[0, 1\)"),
    ("sgd-lr-negative", lambda w: sgd_step(w.params, w.params, sgd_init(w.params), -0.1),
     ValueError, r"learning rate lr must be a finite float ≥ 0"),
    ("settings-eps-zero", lambda w: OptimizerSettings(eps=0.0), ValueError,
     r"OptimizerSettings\.eps must be a finite float > 0"),
    ("settings-beta2-one", lambda w: OptimizerSettings(beta2=1.0), ValueError,
     r"OptimizerSettings\.beta2 must be a number in \[0, 1\)"),
    ("settings-momentum-negative", lambda w: OptimizerSettings(name="sgd", momentum=-0.5),
     ValueError, r"OptimizerSettings\.momentum must be a number in \[0, 1\)"),
    ("settings-final-fraction-text", lambda w: OptimizerSettings(final_lr_fraction="0.1"),
     ValueError, r"OptimizerSettings\.final_lr_fraction must be in \[0, 1\]"),
    ("settings-warmup-bool", lambda w: OptimizerSettings(warmup_steps=True), ValueError,
     r"OptimizerSettings\.warmup_steps must be an int ≥ 0"),
    # -- removed and seed ------------------------------------------------------------------
    ("removed-int", lambda w: implicit_update(w.params, STACK, w.context, w.query, removed=2),
     TypeError, r"removed must be None or a list of context positions, got int 2; for one"
     r" position write removed=\[2\]"),
    ("removed-iterator", lambda w: implicit_update(w.params, STACK, w.context, w.query,
     removed=iter([0, 1])), TypeError, r"removed must be a list of context positions, not an"
     r" iterator"),
    ("removed-generator", lambda w: implicit_update(w.params, STACK, w.context, w.query,
     removed=(j for j in [0, 1])), TypeError, r"removed .*not an iterator \(generator\)"),
    ("removed-text", lambda w: implicit_update(w.params, STACK, w.context, w.query,
     removed="01"), TypeError, r"removed must be None or a list of context positions, got str"),
    ("removed-out-of-range", lambda w: implicit_update(w.params, STACK, w.context, w.query,
     removed=[5]), ValueError, r"removed position 5 is out of range"),
    ("removed-repeated", lambda w: implicit_update(w.params, STACK, w.context, w.query,
     removed=[1, 1]), ValueError, r"removed positions must be distinct"),
    ("removed-float", lambda w: implicit_update(w.params, STACK, w.context, w.query,
     removed=[0.5]), ValueError, r"removed positions must be ints, got 0\.5"),
    ("removed-2d-array", lambda w: remove_tokens(w.context, w.query, numpy.zeros((1, 1), int)),
     ValueError, r"removed must be one-dimensional"),
    ("remove-tokens-int", lambda w: remove_tokens(w.context, w.query, 0), TypeError,
     r"removed must be None or a list"),
    ("init-seed-negative", lambda w: init_params(STACK, seed=-1), ValueError,
     r"seed must be an int ≥ 0, got -1"),
    ("init-seed-float", lambda w: init_params(STACK, seed=1.5), ValueError,
     r"seed must be an int ≥ 0, got 1\.5"),
    ("prompts-seed-negative", lambda w: regression_prompts(4, 5, 2, seed=-1), ValueError,
     r"seed must be an int ≥ 0 or a numpy Generator, got -1"),
    ("stream-seed-negative", lambda w: regression_stream(4, 5, 2, seed=-2), ValueError,
     r"seed must be an int ≥ 0"),
    ("train-seed-negative", lambda w: train(ONE, w.one, OptimizerSettings(), 2, 4, 5, 2,
     seed=-1), ValueError, r"seed must be an int ≥ 0, got -1"),
    ("train-setup-seed-negative", lambda w: train_setup(paper_setting(fast=True), seed=-3),
     ValueError, r"seed must be an int ≥ 0, got -3"),
    ("baselines-seed-negative", lambda w: compare_with_baselines(
        init_params(paper_setting().config), paper_setting(), n_prompts=8, seed=-1),
     ValueError, r"seed must be an int ≥ 0, got -1"),
    # -- overflow and subnormal numbers ----------------------------------------------------
    ("forward-overflow", lambda w: forward(w.one, ONE, w.tokens * 1e200), ValueError,
     r"the forward pass overflowed float64 in block 0: the tokens are finite"),
    ("predict-overflow", lambda w: predict(w.one, ONE, w.tokens * 1e200), ValueError,
     r"forward pass overflowed"),
    ("implicit-update-overflow", lambda w: implicit_update(w.one, ONE, w.context * 1e200,
     w.query * 1e200), ValueError, r"forward pass overflowed"),
    ("implicit-path-overflow", lambda w: implicit_path(w.one, ONE, w.context * 1e200,
     w.query * 1e200), ValueError, r"implicit_path: the forward pass overflowed"),
    ("factorised-path-overflow", lambda w: factorised_path(w.one, ONE, w.context * 1e200,
     w.query * 1e200), ValueError, r"factorised_path: the forward pass overflowed"),
    ("implicit-path-layernorm-overflow", lambda w: implicit_path(
        _one_layernorm(), ONE_LN, w.context * 1e160, w.query * 1e160), ValueError,
     r"forward pass overflowed float64 in block 0: .* LayerNorm's variance overflowed"),
    ("factorised-path-layernorm-overflow", lambda w: factorised_path(
        _one_layernorm(), ONE_LN, w.context * 1e160, w.query * 1e160), ValueError,
     r"forward pass overflowed float64 in block 0: .* LayerNorm's variance overflowed"),
    ("forward-subnormal-tokens", lambda w: forward(w.params, STACK, w.tokens * 1e-310),
     ValueError, r"tokens: subnormal numbers"),
    ("implicit-subnormal-context", lambda w: implicit_update(w.params, STACK,
     w.context * 1e-310, w.query), ValueError, r"context: subnormal numbers"),
    ("implicit-subnormal-query", lambda w: implicit_update(w.params, STACK, w.context,
     w.query * 1e-310), ValueError, r"query: subnormal numbers"),
    ("path-subnormal", lambda w: implicit_path(w.one, ONE, w.context * 1e-310,
     w.query * 1e-310), ValueError, r"context: subnormal numbers"),
    ("float32-subnormal", lambda w: forward(to_device(w.one, "numpy", numpy.float32), ONE,
     (w.tokens * 1e-39).astype(numpy.float32)), ValueError,
     r"tokens: subnormal numbers .* the smallest normal float32"),
    ("forward-nan-tokens", lambda w: forward(w.params, STACK, w.tokens * numpy.nan),
     ValueError, r"tokens contain NaN or infinity"),
    ("forward-nan-params", lambda w: forward(_block(w, mlp={
        "W1": w.params.blocks[1].mlp.W1 * numpy.inf}), STACK, w.tokens), ValueError,
     r"params\.blocks\.1\.mlp\.W1 contains NaN or infinity"),
    ("implicit-inf-query", lambda w: implicit_update(w.params, STACK, w.context,
     w.query * numpy.inf), ValueError, r"query contains NaN or infinity"),
    # -- namespaces ----------------------------------------------------------------------
    ("init-unknown-namespace", lambda w: init_params(STACK, xp="jax"), ValueError,
     r"xp must be 'numpy', 'cupy' or an array namespace, got 'jax'"),
    ("prompts-namespace-object", lambda w: regression_prompts(4, 5, 2, xp=3), TypeError,
     r"xp must be an array namespace"),
    ("to-device-unknown-target", lambda w: to_device(w.params, "tpu"), ValueError,
     r"unknown target 'tpu'"),
    # -- files ------------------------------------------------------------------------------
    ("save-into-a-directory", lambda w: save_checkpoint(w.tmp, w.params, STACK), ValueError,
     r"path .* is a directory, not a file"),
    ("save-missing-directory", lambda w: save_checkpoint(w.tmp / "no" / "m.npz", w.params,
     STACK), ValueError, r"path .*: the directory .* does not exist"),
    ("save-metadata-not-json", lambda w: save_checkpoint(w.tmp / "m.npz", w.params, STACK,
     metadata={"x": object()}), ValueError, r"metadata must be JSON data"),
    ("save-config-dict", lambda w: save_checkpoint(w.tmp / "m.npz", w.params,
     STACK.to_dict()), TypeError, r"config must be a TransformerConfig, got dict"),
    ("load-a-directory", lambda w: load_checkpoint(w.tmp), ValueError,
     r"is a directory, not a checkpoint file"),
    # -- sizes and settings ---------------------------------------------------------------
    ("prompts-batch-size-zero", lambda w: regression_prompts(0, 5, 2), ValueError,
     r"batch_size must be a positive int, got 0"),
    ("prompts-noise-negative", lambda w: regression_prompts(4, 5, 2, noise=-1.0), ValueError,
     r"noise must be a finite float ≥ 0"),
    ("ridge-lambda-nan", lambda w: ridge_predict(regression_prompts(4, 5, 2), float("nan")),
     ValueError, r"ridge lambda must be a finite float ≥ 0"),
    ("train-steps-zero", lambda w: train(ONE, w.one, OptimizerSettings(), 0, 4, 5, 2),
     ValueError, r"steps must be a positive int, got 0"),
    ("train-token-width", lambda w: train(ONE, w.one, OptimizerSettings(), 2, 4, 5, 3),
     ValueError, r"prompts in dimension d = 3 need config\.d_token = 4"),
    ("train-optimizer-dict", lambda w: train(ONE, w.one, {"lr": 0.1}, 2, 4, 5, 2),
     TypeError, r"optimizer must be an OptimizerSettings"),
    ("init-device", lambda w: init_params(STACK, device="gpu"), ValueError,
     r"device 'gpu' is not a device of numpy: Device not understood"),
    ("prompts-device", lambda w: regression_prompts(2, 3, 2, device="cuda:0"), ValueError,
     r"device 'cuda:0' is not a device of numpy"),
    ("checkpoint-device", lambda w: load_checkpoint("model.npz", device=1), ValueError,
     r"device 1 is not a device of numpy"),
    ("von-oswald-device", lambda w: von_oswald_attention(2, 0.1, 5, device="gpu"), ValueError,
     r"device 'gpu' is not a device of numpy"),
    ("init-config-dict", lambda w: init_params(STACK.to_dict()), TypeError,
     r"config must be a TransformerConfig, got dict"),
    # -- the loss, unflatten, von Oswald's construction ------------------------------------
    ("activation-kind", lambda w: activation_forward(w.tokens, "tanh"), ValueError,
     r"activation_forward: kind must be 'relu' or 'gelu', got 'tanh'"),
    ("loss-out-list", lambda w: query_loss(w.tokens.tolist(), w.target), ValueError,
     r"query_loss: out must have shape \(B, Tq, D\) with B, Tq, D ≥ 1 .*got None"),
    ("loss-target-list", lambda w: query_loss(w.tokens, w.target.tolist()), ValueError,
     r"query_loss: target must have shape \(B,\) = \(4,\), got None"),
    ("loss-int-out", lambda w: query_loss(w.tokens.astype(int), w.target), TypeError,
     r"out: dtype int64 is refused"),
    ("loss-complex-target", lambda w: query_loss(w.tokens, w.target + 0j), TypeError,
     r"target: dtype complex128 is refused"),
    ("loss-no-prompts", lambda w: query_loss(w.tokens[:0], w.target[:0]), ValueError,
     r"query_loss: out must have shape \(B, Tq, D\) with B, Tq, D ≥ 1.*\(0, 6, 3\)"),
    ("loss-no-positions", lambda w: query_loss(w.tokens[:, :0], w.target), ValueError,
     r"query_loss: out must have shape .*\(4, 0, 3\)"),
    ("unflatten-wrong-size", lambda w: unflatten(numpy.zeros(3), w.params), ValueError,
     r"unflatten: vector has 3 entries, the tree needs \d+"),
    ("unflatten-matrix", lambda w: unflatten(numpy.zeros((1, 3)), w.params), ValueError,
     r"unflatten: vector must be a one-dimensional array"),
    ("von-oswald-eta-inf", lambda w: von_oswald_attention(2, float("inf"), 5), ValueError,
     r"eta must be a finite float ≥ 0 \(a gradient step size\), got inf"),
    ("von-oswald-eta-negative", lambda w: von_oswald_predict(w.tokens, -0.1), ValueError,
     r"eta must be a finite float ≥ 0 \(a gradient step size\), got -0\.1"),
    ("von-oswald-eta-nan", lambda w: von_oswald_model(2, float("nan"), 5), ValueError,
     r"eta must be a finite float ≥ 0 .*got nan"),
    ("von-oswald-eta-text", lambda w: von_oswald_attention(2, "0.1", 5), ValueError,
     r"eta must be a finite float ≥ 0 .*got '0\.1'"),
    ("von-oswald-n-context-float", lambda w: von_oswald_attention(2, 0.1, 5.0), ValueError,
     r"n_context must be a positive int, got 5\.0"),
    ("von-oswald-int-dtype", lambda w: von_oswald_attention(2, 0.1, 5, dtype="int32"),
     TypeError, r"dtype must be a real floating-point type.*integers would truncate"),
    ("von-oswald-unknown-namespace", lambda w: von_oswald_model(2, 0.1, 5, xp="jax"),
     ValueError, r"xp must be 'numpy', 'cupy' or an array namespace"),
    ("von-oswald-int-tokens", lambda w: von_oswald_predict(w.tokens.astype(int), 0.1),
     TypeError, r"tokens: dtype int64 is refused"),
    ("von-oswald-no-prompts", lambda w: von_oswald_predict(w.tokens[:0], 0.1), ValueError,
     r"tokens must have shape \(B, N\+1, d\+1\) with B ≥ 1, N ≥ 1 and d ≥ 1"),
    ("gd-predict-eta-negative", lambda w: one_step_gd_predict(w.batch, -0.5), ValueError,
     r"eta must be a finite float ≥ 0 \(a gradient step size\), got -0\.5"),
    # -- the minimum norm, the null space, linear attention's context vector --------------
    ("min-norm-prompts-differ", lambda w: minimum_norm_solution(
        w.patches[0].column, w.patches[0].u_without[:2]), ValueError,
     r"u_without must have shape \(B, D\) with the column's B = 4, got shape \(2, 3\)"),
    ("min-norm-one-prompt-1d", lambda w: minimum_norm_solution(
        w.patches[0].column[0], w.patches[0].u_without[0]), ValueError,
     r"column must have shape \(B, M\)"),
    ("min-norm-int", lambda w: minimum_norm_solution(w.patches[0].column.astype(int),
     w.patches[0].u_without), TypeError, r"column: dtype int64 is refused"),
    ("min-norm-dtypes-differ", lambda w: minimum_norm_solution(w.patches[0].column,
     w.patches[0].u_without.astype(numpy.float32)), TypeError,
     r"column \(float64\) and u_without \(float32\) must share a dtype"),
    ("min-norm-nan", lambda w: minimum_norm_solution(w.patches[0].column,
     w.patches[0].u_without * numpy.nan), ValueError, r"u_without contains NaN or infinity"),
    ("min-norm-zero-vector", lambda w: minimum_norm_solution(w.patches[0].column,
     w.patches[0].u_without * 0.0), ValueError,
     r"u_without is the zero vector for prompt\(s\) \[0, 1, 2, 3\]: X a = W δ has no solution"),
    ("null-space-not-an-update", lambda w: null_space_perturbation(w.patches[0].delta_W,
     numpy.ones((5, 3))), TypeError, r"update must be an ImplicitUpdate"),
    ("null-space-Z-shape", lambda w: null_space_perturbation(w.patches[0], numpy.ones((4, 3))),
     ValueError, r"perturbation must have shape \(M, D\) = \(5, 3\) or delta_W's shape"
     r" \(4, 5, 3\), got shape \(4, 3\)"),
    ("null-space-Z-other-prompts", lambda w: null_space_perturbation(w.patches[0],
     numpy.ones((2, 5, 3))), ValueError, r"perturbation must have shape"),
    ("null-space-Z-list", lambda w: null_space_perturbation(w.patches[0],
     numpy.ones((5, 3)).tolist()), ValueError, r"perturbation must have shape .*got shape None"),
    ("null-space-Z-complex", lambda w: null_space_perturbation(w.patches[0],
     numpy.ones((5, 3)) + 1j), TypeError, r"perturbation: dtype complex128 is refused"),
    ("null-space-Z-nan", lambda w: null_space_perturbation(w.patches[0],
     numpy.full((5, 3), numpy.nan)), ValueError, r"perturbation contains NaN or infinity"),
    ("linear-context-n-heads-zero", lambda w: linear_attention_context_vector(
        w.one.blocks[0].attn, 0, w.context, w.query), ValueError,
     r"n_heads must be a positive int dividing n_heads·d_head = 4, got 0"),
    ("linear-context-n-heads-not-dividing", lambda w: linear_attention_context_vector(
        w.one.blocks[0].attn, 3, w.context, w.query), ValueError,
     r"n_heads must be a positive int dividing n_heads·d_head = 4, got 3"),
    ("linear-context-n-heads-float", lambda w: linear_attention_context_vector(
        w.one.blocks[0].attn, 2.0, w.context, w.query), ValueError,
     r"n_heads must be a positive int .*got 2\.0"),
    ("linear-context-block-params", lambda w: linear_attention_context_vector(
        w.one.blocks[0], 2, w.context, w.query), TypeError,
     r"attn_params must be an AttentionParams \(params\.blocks\[l\]\.attn\), got BlockParams"),
    ("linear-context-token-width", lambda w: linear_attention_context_vector(
        w.one.blocks[0].attn, 2, w.context[..., :2], w.query), ValueError,
     r"context_tokens must have shape \(B, \|Y\|, d_token=3\)"),
    ("linear-context-query-prompts", lambda w: linear_attention_context_vector(
        w.one.blocks[0].attn, 2, w.context, w.query[:2]), ValueError,
     r"query_token must have shape \(B, d_token\) = \(4, 3\), got shape \(2, 3\)"),
    ("linear-context-query-3d", lambda w: linear_attention_context_vector(
        w.one.blocks[0].attn, 2, w.context, w.query[:, None]), ValueError,
     r"query_token must have shape"),
    ("linear-context-int", lambda w: linear_attention_context_vector(
        w.one.blocks[0].attn, 2, w.context.astype(int), w.query), TypeError,
     r"context_tokens: dtype int64 is refused"),
    ("linear-context-nan", lambda w: linear_attention_context_vector(
        w.one.blocks[0].attn, 2, w.context, w.query * numpy.nan), ValueError,
     r"query_token contains NaN or infinity"),
    # -- every position as a query, the thought patch ---------------------------------------
    ("at-position-float", lambda w: at_position(_every(w), 1.0), TypeError,
     r"t must be an int position, got float"),
    ("at-position-negative", lambda w: at_position(_every(w), -1), ValueError,
     r"t must satisfy 0 ≤ t < T = 6, got -1"),
    ("at-position-past-the-end", lambda w: at_position(_every(w), 6), ValueError,
     r"t must satisfy 0 ≤ t < T = 6, got 6"),
    ("at-position-query-patches", lambda w: at_position(w.patches, 0), ValueError,
     r"updates carry no position axis: delta_W has shape \(4, 5, 3\)"),
    ("alignment-query-patches", lambda w: position_alignment(w.patches), ValueError,
     r"updates carry no position axis"),
    ("alignment-one-update", lambda w: position_alignment(_every(w)[0]), TypeError,
     r"updates must be the tuple of ImplicitUpdate .*got ImplicitUpdate"),
    ("alignment-empty", lambda w: position_alignment(()), TypeError,
     r"updates must be the tuple of ImplicitUpdate"),
    ("alignment-positions-differ", lambda w: position_alignment(
        (_every(w)[0], _every(w, 4)[0])), ValueError,
     r"updates\[1\]\.delta_W has shape \(4, 4, 5, 3\), expected \(B, T, M, D\) with B = 4"
     r" prompts and T = 6 positions"),
    ("last-token-per-block-text", lambda w: implicit_update_from_last_token(
        w.one, ONE, w.tokens, per_block="yes"), TypeError,
     r"per_block must be True or False, got str 'yes'"),
    ("every-position-int-tokens", lambda w: implicit_update_every_position(
        w.one, ONE, w.tokens.astype(int)), TypeError, r"tokens: dtype int64 is refused"),
    ("every-position-mismatch", lambda w: implicit_update_every_position(w.params, ONE,
     w.tokens), ValueError, r"params must be a ModelParams with 1 blocks"),
    ("thought-rtol-negative", lambda w: thought_patch(w.one, ONE, w.context,
     w.query[:, None], rtol=-1.0), ValueError, r"rtol must be a finite float ≥ 0, got -1\.0"),
    ("thought-rtol-nan", lambda w: thought_patch(w.one, ONE, w.context, w.query[:, None],
     rtol=float("nan")), ValueError, r"rtol must be a finite float ≥ 0, got nan"),
    ("minimum-norm-overflows", lambda w: minimum_norm_solution(
        numpy.ones((4, 5)) * 1e200, numpy.ones((4, 3)) * 1e-200), ValueError,
     r"minimum_norm_solution: the result overflowed float64 .*Rescale the inputs"),
    ("linear-context-vector-overflows", lambda w: linear_attention_context_vector(
        w.one.blocks[0].attn, 2, w.context * 1e200, w.query * 1e200), ValueError,
     r"linear_attention_context_vector: the result overflowed float64"),
    ("thought-rtol-one", lambda w: thought_patch(w.one, ONE, w.context, w.query[:, None],
     rtol=1.0), ValueError, r"rtol = 1 ≥ 1 treats every singular value of A as zero.*pass rtol < 1"),
    ("thought-float32-too-many-queries", lambda w: thought_patch(
        to_device(w.one, "numpy", dtype="float32"), ONE, w.context.astype("float32"),
        numpy.repeat(w.query[:, None], 8400, axis=1).astype("float32")), ValueError,
     r"the default cutoff RANK_CUTOFF·max\(D, K\)·eps reaches 1 for K = 8400 calibration"
     r" queries in float32"),
    ("thought-float16", lambda w: thought_patch(w.one, ONE, w.context.astype("float16"),
     w.query[:, None].astype("float16")), TypeError,
     r"dtype float16 is refused.*float16 keeps about three significant digits"),
    ("forward-float16", lambda w: forward(w.one, ONE, w.tokens.astype("float16")),
     TypeError, r"tokens: dtype float16 is refused"),
    ("init-float16", lambda w: init_params(ONE, dtype="float16"), TypeError,
     r"dtype must be a real floating-point type \(float32 or float64\), got 'float16'"),
    ("thought-queries-2d", lambda w: thought_patch(w.one, ONE, w.context, w.query),
     ValueError, r"calibration_queries must have shape \(B, T, d_token\)"),
    ("thought-no-queries", lambda w: thought_patch(w.one, ONE, w.context,
     w.query[:, None][:, :0]), ValueError, r"calibration_queries must hold at least one"),
    ("thought-nan-context", lambda w: thought_patch(w.one, ONE, w.context * numpy.nan,
     w.query[:, None]), ValueError, r"tokens contain NaN or infinity"),
    ("compression-n-calibration-int", lambda w: compression_error(w.one, ONE, w.context,
     w.query[:, None], w.query[:, None], n_calibration=1), TypeError,
     r"n_calibration must be a list of ints .*write n_calibration=\[1\]"),
    ("compression-n-calibration-empty", lambda w: compression_error(w.one, ONE, w.context,
     w.query[:, None], w.query[:, None], n_calibration=()), ValueError,
     r"n_calibration must hold at least one K"),
    ("compression-n-calibration-too-big", lambda w: compression_error(w.one, ONE, w.context,
     w.query[:, None], w.query[:, None], n_calibration=[2]), ValueError,
     r"n_calibration entries must be ints in \[1, 1\]"),
    ("compression-test-prompts", lambda w: compression_error(w.one, ONE, w.context,
     w.query[:, None], w.query[:2, None], n_calibration=[1]), ValueError,
     r"test_queries hold 2 prompts but context holds 4"),
    # -- flags, removed, prompts ------------------------------------------------------------
    ("forward-last-only-int", lambda w: forward(w.params, STACK, w.tokens, last_only=2),
     TypeError, r"last_only must be True or False, got int 2"),
    ("forward-check-finite-text", lambda w: forward(w.params, STACK, w.tokens,
     check_finite="no"), TypeError, r"check_finite must be True or False, got str 'no'"),
    ("backward-fast-text", lambda w: backward(numpy.ones((4, 1, 3)), _lm(w)[1], fast="no"),
     TypeError, r"fast must be True or False"),
    ("forward-no-prompts", lambda w: forward(w.params, STACK, w.tokens[:0]), ValueError,
     r"tokens must hold at least one prompt of one token, got shape \(0, 6, 3\)"),
    ("forward-bool-tokens", lambda w: forward(w.params, STACK, w.tokens > 0), TypeError,
     r"tokens: dtype bool is refused.*booleans"),
    ("forward-patches-of-one-block", lambda w: predict(w.params, STACK, w.tokens[:, -1:],
     patches=implicit_update(w.one, ONE, w.context, w.query)), ValueError,
     r"patches must hold one entry per block \(2\), got 1"),
    ("forward-layernorm-overflow", lambda w: forward(w.params, STACK, w.tokens * 1e160),
     ValueError, r"the forward pass overflowed float64 in block 0: .* a LayerNorm's variance"
     r" overflowed"),
    ("implicit-layernorm-overflow", lambda w: implicit_update(w.params, STACK,
     w.context * 1e160, w.query * 1e160), ValueError, r"LayerNorm's variance overflowed"),
    ("implicit-no-prompts", lambda w: implicit_update(w.params, STACK, w.context[:0],
     w.query[:0]), ValueError, r"context must have shape \(B, N, d_token=3\) with B ≥ 1"),
    ("removed-dict", lambda w: implicit_update(w.params, STACK, w.context, w.query,
     removed={0: 1}), TypeError, r"removed must be a list of context positions, got a dict"),
    ("removed-negative", lambda w: implicit_update(w.params, STACK, w.context, w.query,
     removed=[-1]), ValueError, r"removed position -1 is out of range"),
    ("removed-bool", lambda w: implicit_update(w.params, STACK, w.context, w.query,
     removed=[True]), ValueError, r"removed positions must be ints, got True"),
    ("removed-numpy-int", lambda w: implicit_update(w.params, STACK, w.context, w.query,
     removed=numpy.int64(1)), TypeError, r"for one position write removed=\["),
    ("removed-float-array", lambda w: remove_tokens(w.context, w.query,
     numpy.array([0.0])), ValueError, r"removed positions must be ints"),
    ("remove-tokens-query-3d", lambda w: remove_tokens(w.context, w.query[:, None], [0]),
     ValueError, r"query must have shape \(B, d_token=3\), got shape \(4, 1, 3\)"),
    ("remove-tokens-list", lambda w: remove_tokens(w.context.tolist(), w.query, [0]),
     ValueError,
     r"context must have shape \(B, N, d_token\) with B ≥ 1, got shape None: not an array"),
    ("remove-tokens-prompts-differ", lambda w: remove_tokens(w.context, w.query[:2], [0]),
     ValueError, r"query holds 2 prompts but context holds 4"),
    ("remove-tokens-int-dtype", lambda w: remove_tokens(w.context.astype(int),
     w.query.astype(int), [0]), TypeError, r"context: dtype int64 is refused"),
    ("prompt-tokens-int", lambda w: prompt_tokens(w.batch.context_x.astype(int),
     w.batch.context_y.astype(int), w.batch.query_x.astype(int)), TypeError,
     r"context_x: dtype int64 is refused"),
    ("prompt-tokens-list", lambda w: prompt_tokens(w.batch.context_x.tolist(),
     w.batch.context_y, w.batch.query_x), ValueError,
     r"prompt_tokens: context_x must have shape \(B, N, d\)"),
    ("zero-predict-none", lambda w: zero_predict(None), TypeError,
     r"batch must be a RegressionBatch \(from regression_prompts\), got NoneType"),
    ("gd-predict-tokens", lambda w: one_step_gd_predict(w.tokens), TypeError,
     r"batch must be a RegressionBatch .*got ndarray"),
    ("least-squares-none", lambda w: least_squares_predict(None), TypeError,
     r"batch must be a RegressionBatch"),
    ("prompts-seed-float", lambda w: regression_prompts(4, 5, 2, seed=1.0), ValueError,
     r"seed must be an int ≥ 0 or a numpy Generator, got 1\.0"),
    ("train-n-context-zero", lambda w: train(ONE, w.one, OptimizerSettings(), 2, 4, 0, 2),
     ValueError, r"n_context must be a positive int, got 0"),
    ("sgd-lr-nan", lambda w: sgd_step(w.params, w.params, sgd_init(w.params), float("nan")),
     ValueError, r"learning rate lr must be a finite float ≥ 0, got nan"),
    ("adam-state-int-moments", lambda w: adam_step(w.params, w.params, adam_init(
        w.params)._replace(m=adam_init(w.params).m.astype(int)), 0.1), TypeError,
     r"state\.m: dtype int64 is refused"),
    ("train-setup-none", lambda w: train_setup(None), TypeError,
     r"setup must be a TrainingSetup, got NoneType"),
    ("paper-setting-fast-text", lambda w: paper_setting(fast="yes"), TypeError,
     r"fast must be True or False"),
    ("to-device-int-dtype", lambda w: to_device(w.params, "numpy", dtype="int32"), TypeError,
     r"dtype must be a real floating-point type"),
    ("residual-shapes-differ", lambda w: relative_residual(numpy.ones(3), numpy.ones(4)),
     ValueError, r"a and b must have one shape \(or broadcast to one\), got \(3,\) and \(4,\)"),
    ("residual-empty", lambda w: relative_residual(numpy.ones(0), numpy.ones(0)), ValueError,
     r"a and b are empty"),
    ("residual-list", lambda w: relative_residual([1.0], numpy.ones(1)), TypeError,
     r"a must be an array, got list"),
    ("load-path-none", lambda w: load_checkpoint(None), TypeError,
     r"path must be a file path, got NoneType"),
    ("save-extra-list", lambda w: save_checkpoint(w.tmp / "m.npz", w.params, STACK,
     extra=[numpy.ones(2)]), TypeError, r"extra must be a dict of named arrays, got list"),
    # -- training setups ------------------------------------------------------------------------
    ("compare-setup-none", lambda w: compare_with_baselines(w.one, None), TypeError,
     r"setup must be a TrainingSetup, got NoneType"),
    ("compare-setup-dict", lambda w: compare_with_baselines(w.one, _setup().to_dict()),
     TypeError, r"setup must be a TrainingSetup, got dict; build one from a dict with"
     r" TrainingSetup\.from_dict"),
    ("compare-params-of-other-model", lambda w: compare_with_baselines(w.params, _setup()),
     ValueError, r"params must be a ModelParams with 1 blocks, got ModelParams with 2"),
    ("setup-from-dict-missing-keys", lambda w: TrainingSetup.from_dict({"steps": 1}),
     ValueError, r"TrainingSetup: missing \['config', 'optimizer', 'batch_size', 'n_context',"
     r" 'd'\] keys"),
    ("setup-from-dict-unknown-key", lambda w: TrainingSetup.from_dict(
        {**_setup().to_dict(), "seed": 0}), ValueError, r"TrainingSetup: unknown \['seed'\] keys"),
    ("setup-from-dict-optimizer-key", lambda w: TrainingSetup.from_dict({**_setup().to_dict(),
     "optimizer": {"learning_rate": 0.1}}), ValueError,
     r"TrainingSetup\.optimizer: unknown \['learning_rate'\] keys"),
    ("setup-from-dict-config-text", lambda w: TrainingSetup.from_dict(
        {**_setup().to_dict(), "config": "ONE"}), TypeError,
     r"TrainingSetup\.config must be a dict of fields, got str"),
    ("setup-from-dict-list", lambda w: TrainingSetup.from_dict([("steps", 1)]), TypeError,
     r"TrainingSetup must be a dict of fields, got list"),
    # -- the baselines' linear algebra ------------------------------------------------------
    ("ridge-lambda-overflows", lambda w: ridge_lambda(0.1, 1e-200), ValueError,
     r"ridge_lambda\(noise=0\.1, prior_std=1e-200\): λ = \(σ/τ\)²: the result overflowed"
     r" float64"),
    ("ridge-lambda-prior-zero", lambda w: ridge_lambda(0.1, 0.0), ValueError,
     r"prior_std must be a finite float > 0, got 0\.0"),
    ("ridge-zero-lambda-too-few-pairs", lambda w: ridge_predict(regression_prompts(4, 1, 3),
     0.0), ValueError, r"ridge_predict: lam = 0 needs N ≥ d context pairs, got N = 1 < d = 3"),
    ("ridge-zero-lambda-zero-context", lambda w: ridge_predict(w.batch._replace(
        tokens=w.batch.tokens * 0.0), 0.0), ValueError,
     r"ridge_predict: XᵀX \+ λI is singular for some prompt \(lam = 0\.0\)"),
    ("ridge-nan-tokens", lambda w: ridge_predict(w.batch._replace(
        tokens=w.batch.tokens * numpy.nan), 0.1), ValueError,
     r"batch\.tokens contain NaN or infinity"),
    ("ridge-overflows", lambda w: ridge_predict(w.batch._replace(
        tokens=w.batch.tokens * 1e200), 0.1), ValueError,
     r"ridge_predict: the result overflowed float64"),
    ("least-squares-nan-tokens", lambda w: least_squares_predict(w.batch._replace(
        tokens=w.batch.tokens * numpy.nan)), ValueError, r"batch\.tokens contain NaN or infinity"),
    # -- checkpoints and their paths --------------------------------------------------------
    ("load-absurd-d-mlp", lambda w: load_checkpoint(_stored(w, d_mlp=10**12)), ValueError,
     r"parameter blocks\.0\.mlp\.W1 has shape \(5, 3\), the configuration needs"
     r" \(1000000000000, 3\)"),
    ("load-absurd-n-blocks", lambda w: load_checkpoint(_stored(w, n_blocks=10**12)), ValueError,
     r"parameters missing: the configuration's 1000000000000 blocks need 8000000000000"
     r" parameter arrays, the file holds 8"),
    ("save-extra-ragged", lambda w: save_checkpoint(w.tmp / "m.npz", w.one, ONE,
     extra={"losses": [[1.0, 2.0], [3.0]]}), ValueError,
     r"extra array 'losses' is ragged"),
    ("save-extra-text", lambda w: save_checkpoint(w.tmp / "m.npz", w.one, ONE,
     extra={"note": "trained"}), ValueError,
     r"extra array 'note' has dtype <U7; only numeric arrays \(text belongs in metadata\)"),
    ("save-path-empty", lambda w: save_checkpoint("", w.one, ONE), ValueError,
     r"path is empty"),
    ("save-path-trailing-separator", lambda w: save_checkpoint(str(w.tmp / "absent") + "/",
     w.one, ONE), ValueError, r"path .*absent/' ends with a separator: it names a directory"),
    ("save-path-missing-directory", lambda w: save_checkpoint(w.tmp / "absent" / "m.npz",
     w.one, ONE), ValueError, r"path .*: the directory .*absent' does not exist"),
    ("save-path-nul", lambda w: save_checkpoint("m\0.npz", w.one, ONE), ValueError,
     r"path 'm\\x00\.npz' contains a NUL character"),
    # -- prefix_states: one block's query states after each prefix ------------------------------
    ("prefix-states-context-width", lambda w: prefix_states(w.one.blocks[0], ONE,
     numpy.ones((4, 5, 4)), w.query), ValueError,
     r"context must have shape \(B, N, d_token=3\) with B ≥ 1, got shape \(4, 5, 4\)"),
    ("prefix-states-query-3d", lambda w: prefix_states(w.one.blocks[0], ONE, w.context,
     w.query[:, None, :]), ValueError,
     r"query must have shape \(B, d_token=3\), got shape \(4, 1, 3\)"),
    ("prefix-states-query-other-prompts", lambda w: prefix_states(w.one.blocks[0], ONE,
     w.context, w.query[:2]), ValueError, r"query holds 2 prompts but context holds 4"),
    ("prefix-states-context-int", lambda w: prefix_states(w.one.blocks[0], ONE,
     w.context.astype(int), w.query), TypeError, r"context: dtype int64 is refused"),
    ("prefix-states-model-params", lambda w: prefix_states(w.one, ONE, w.context, w.query),
     TypeError, r"block_params must be a BlockParams .*got ModelParams; pass params\.blocks\[0\]"),
    ("prefix-states-W1-shape", lambda w: prefix_states(w.one.blocks[0]._replace(
        mlp=w.one.blocks[0].mlp._replace(W1=numpy.ones((4, 3)))), ONE, w.context, w.query),
     ValueError, r"W1 has shape \(4, 3\), config expects \(5, 3\) .*\(block_params\.mlp\.W1\)"),
    ("prefix-states-config-dict", lambda w: prefix_states(w.one.blocks[0], {}, w.context,
     w.query), TypeError, r"config must be a TransformerConfig, got dict"),
    ("prefix-states-method", lambda w: prefix_states(w.one.blocks[0], ONE, w.context, w.query,
     method="fast"), ValueError, r"method \(the prefix method\) must be one of \('auto',"),
    ("factorised-path-rnn-method", lambda w: factorised_path(
        init_params(_RNN), _RNN, w.context, w.query, method="fast"), ValueError,
     r"method \(the prefix method\) must be one of"),
    # -- Proposition 3.1's loss, batches of lists ---------------------------------------------
    ("path-loss-W-shape", lambda w: implicit_path(w.one, ONE, w.context, w.query).loss(
        0, numpy.ones((3, 3))), ValueError,
     r"W must have shape \(M, D\) = \(5, 3\) or \(B, M, D\) = \(4, 5, 3\), got shape \(3, 3\)"),
    ("path-loss-W-list", lambda w: implicit_path(w.one, ONE, w.context, w.query).loss(
        0, numpy.ones((5, 3)).tolist()), ValueError, r"W must have shape .*got list"),
    ("path-loss-W-int", lambda w: implicit_path(w.one, ONE, w.context, w.query).loss(
        0, numpy.ones((5, 3), dtype=int)), TypeError, r"W: dtype int64 is refused"),
    ("batch-of-lists", lambda w: zero_predict(RegressionBatch(
        w.batch.tokens.tolist(), w.batch.target.tolist(), w.batch.w.tolist())), ValueError,
     r"batch\.tokens must be an array of shape \(B, N\+1, d\+1\), got list \(no shape\)"),
    ("batch-context-of-lists", lambda w: RegressionBatch(
        w.batch.tokens.tolist(), w.batch.target.tolist(), w.batch.w.tolist()).context, ValueError,
     r"batch\.tokens must be an array of shape \(B, N\+1, d\+1\), got list \(no shape\)"),
    ("batch-query-x-two-axes", lambda w: w.batch._replace(tokens=w.batch.tokens[0]).query_x,
     ValueError, r"batch\.tokens must have shape \(B, N\+1, d\+1\) .*got shape \(6, 3\)"),
    ("batch-target-list", lambda w: least_squares_predict(w.batch._replace(
        target=w.batch.target.tolist())), ValueError,
     r"batch\.target must have shape \(B,\) = \(4,\), got None \(list\)"),
    ("batch-target-int", lambda w: zero_predict(w.batch._replace(
        target=w.batch.target.astype(int))), TypeError, r"batch\.target: dtype int64"),
    ("evaluate-batch-of-lists", lambda w: evaluate(w.one, ONE, RegressionBatch(
        w.batch.tokens.tolist(), w.batch.target, w.batch.w)), ValueError,
     r"batch\.tokens must be an array"),
    ("predict-in-chunks-zero", lambda w: predict_in_chunks(w.one, ONE, w.tokens, chunk=0),
     ValueError, r"chunk must be a positive int, got 0"),
    # -- a record with a position axis, one field missing --------------------------------------
    ("at-position-delta-b-none", lambda w: at_position(
        (_every(w)[0]._replace(delta_b=None),), 1), ValueError,
     r"updates\[0\]\.delta_b is NoneType, expected an array of shape \(4, 6, 3\)"),
    ("at-position-u-without-shape", lambda w: at_position(
        (_every(w)[0]._replace(u_without=w.query),), 1), ValueError,
     r"updates\[0\]\.u_without has shape \(4, 3\), expected \(4, 6, 3\)"),
    # -- SGD's state --------------------------------------------------------------------------
    ("sgd-state-text", lambda w: sgd_step(w.params, w.params, "junk", 0.1), TypeError,
     r"state must be the SGDState of sgd_init\(params, momentum\) \(None without momentum\),"
     r" got str"),
    ("sgd-state-bare-velocity", lambda w: sgd_step(w.params, w.params, w.params, 0.1,
     momentum=0.5), TypeError, r"state must be the SGDState .*got ModelParams"),
    ("sgd-velocity-without-momentum", lambda w: sgd_step(w.params, w.params,
     sgd_init(w.params, 0.5), 0.1), ValueError,
     r"state holds a velocity \(from sgd_init with momentum > 0\) but momentum = 0 would drop"),
    ("sgd-none-state-with-momentum", lambda w: sgd_step(w.params, w.params, None, 0.1,
     momentum=0.5), ValueError, r"momentum > 0 needs a state from sgd_init"),
    # -- an overflow caused by the parameters, not the tokens -----------------------------------
    ("forward-huge-params", lambda w: forward(_set(w.one, lambda a: a * 1e200), ONE, w.tokens),
     ValueError, r"overflowed float64 in block 0: the tokens are finite \(largest \|entry\|"
     r" 2\.\d+\), and so are the parameters \(largest \|entry\| 1\.\d+e\+200\), but .*"
     r" Rescale the parameters$"),
    ("implicit-huge-params", lambda w: implicit_update(_set(w.one, lambda a: a * 1e200), ONE,
     w.context, w.query), ValueError, r"Rescale the parameters$"),
    ("path-huge-params", lambda w: implicit_path(_set(w.one, lambda a: a * 1e200), ONE,
     w.context, w.query), ValueError,
     r"implicit_path: the forward pass overflowed float64: .* although the context and query"
     r" are finite \(largest \|entry\| 2\.\d+\), and so are the parameters .* Rescale the"
     r" parameters$"),
    ("forward-huge-tokens-named", lambda w: forward(w.one, ONE, w.tokens * 1e200), ValueError,
     r"the parameters \(largest \|entry\| \d\.\d+\), .* Rescale the tokens$"),
    ("forward-huge-patches", lambda w: predict(w.one, ONE, w.query[:, None] * 10.0, patches=(
        w.patches[0]._replace(delta_W=numpy.full((4, 5, 3), 1e308)),)), ValueError,
     r"and so are the patches \(largest \|entry\| 1e\+308\), .* Rescale the patches$"),
    # -- θ_0 of explicit gradient descent; a prediction that overflows --------------------
    ("gd-theta0-complex", lambda w: one_step_gd_predict(w.batch, 0.1, numpy.ones(2) * (1 + 1j)),
     TypeError, r"theta0 must hold real numbers, got dtype complex128"),
    ("von-oswald-theta0-complex", lambda w: von_oswald_attention(2, 0.1, 5, numpy.ones(2) * 1j),
     TypeError, r"theta0 must hold real numbers, got dtype complex128"),
    ("gd-theta0-text", lambda w: one_step_gd_predict(w.batch, 0.1, "ab"), TypeError,
     r"theta0 must hold real numbers, got dtype <U2: text and Python objects are not numbers"),
    ("gd-theta0-bool", lambda w: one_step_gd_predict(w.batch, 0.1, numpy.array([True, False])),
     TypeError, r"theta0 must hold real numbers, got dtype bool"),
    ("gd-theta0-ragged", lambda w: one_step_gd_predict(w.batch, 0.1, [[1.0], [1.0, 2.0]]),
     ValueError, r"theta0 must be an array of numbers, got a list that is not rectangular"),
    ("gd-huge-eta-overflows", lambda w: one_step_gd_predict(w.batch, 1e308), ValueError,
     r"one_step_gd_predict: the prediction overflowed float64 .*Rescale the tokens, eta or"
     r" theta0"),
    ("gd-huge-theta0-overflows", lambda w: one_step_gd_predict(w.batch, 0.1,
     numpy.full(2, 1e308)), ValueError, r"one_step_gd_predict: the prediction overflowed"),
    ("gd-nan-tokens", lambda w: one_step_gd_predict(w.batch._replace(
        tokens=w.batch.tokens * numpy.nan)), ValueError, r"batch\.tokens contain NaN or infinity"),
    ("von-oswald-huge-theta0", lambda w: von_oswald_predict(w.tokens, 0.1,
     numpy.full(2, 1e308)), ValueError, r"von_oswald_predict: ⟨θ_0, x_q⟩: the result overflowed"),
    # -- a training setup is checked when it is made; the callback before training --------
    ("setup-steps-zero", lambda w: TrainingSetup(ONE, OptimizerSettings(), steps=0,
     batch_size=4, n_context=5, d=2), ValueError, r"TrainingSetup\.steps must be a positive int,"
     r" got 0"),
    ("setup-d-does-not-fit-config", lambda w: TrainingSetup(ONE, OptimizerSettings(), steps=1,
     batch_size=4, n_context=5, d=3), ValueError,
     r"TrainingSetup\.d = 3: .*config\.d_token = d \+ 1 = 4, got 3"),
    ("setup-optimizer-dict", lambda w: TrainingSetup(ONE, {"name": "adam"}, steps=1,
     batch_size=4, n_context=5, d=2), TypeError,
     r"TrainingSetup\.optimizer must be an OptimizerSettings, got dict"),
    ("setup-noise-nan", lambda w: TrainingSetup(ONE, OptimizerSettings(), steps=1,
     batch_size=4, n_context=5, d=2, noise=float("nan")), ValueError,
     r"TrainingSetup\.noise must be a finite float ≥ 0, got nan"),
    ("setup-from-dict-steps-float", lambda w: TrainingSetup.from_dict(
        {**_setup().to_dict(), "steps": 2.5}), ValueError,
     r"TrainingSetup\.steps must be a positive int, got 2\.5"),
    ("train-callback-text", lambda w: train(ONE, w.one, OptimizerSettings(), 1, 4, 5, 2,
     callback="print"), TypeError,
     r"callback must be None or a function taking a Report, got str 'print'"),
    ("train-setup-callback-int", lambda w: train_setup(_setup(), callback=5), TypeError,
     r"callback must be None or a function taking a Report, got int 5"),
    # -- the experiments' entry points: checked before the output folder is made ---------
    ("run-figure-progress-int", lambda w: run_figure("identity", w.tmp / "figure", fast=True,
     progress=5), TypeError, r"progress must be a minimal_icl\.experiments\.Progress .*got int"),
    ("reproduce-progress-text", lambda w: reproduce(w.tmp / "all", fast=True, progress="x"),
     TypeError, r"progress must be a minimal_icl\.experiments\.Progress .*got str"),
    ("run-figure-name-list", lambda w: run_figure(["identity"], w.tmp / "figure"),
     ExperimentError, r"unknown figure \['identity'\]; choose one of identity"),
    ("run-figure-out-none", lambda w: run_figure("identity", None, fast=True), TypeError,
     r"out must be a folder path, got NoneType"),
    ("run-figure-out-empty", lambda w: run_figure("identity", "", fast=True), ExperimentError,
     r"out is empty: give a folder path \('\.' for the current folder\)"),  # wrote into .
    ("reproduce-out-nul", lambda w: reproduce(str(w.tmp / "a\0b"), fast=True), ExperimentError,
     r"out '.*a\\x00b' contains a NUL character"),  # NumPy's bare "embedded null byte"
    ("reproduce-fast-text", lambda w: reproduce(w.tmp / "all", fast="no"), TypeError,
     r"fast must be True or False, got str 'no'"),
    # -- relative_residual's and tree_map's arguments --------------------------------------
    ("relative-residual-bool", lambda w: relative_residual(w.query > 0, w.query > 0), TypeError,
     r"a must be an array of numbers, got dtype bool: booleans are not numbers"),
    ("relative-residual-text", lambda w: relative_residual(w.query, numpy.array(["a"])),
     TypeError, r"b must be an array of numbers, got dtype <U1: text and Python objects"),
    ("tree-map-other-block-count", lambda w: tree_map(lambda a, b: a + b, w.one, w.params),
     ValueError, r"tree_map: the trees do not match: a tuple of 1 entries in tree, 2 entries"
     r" in rest"),
    ("tree-map-none-against-set", lambda w: tree_map(lambda a, b: a + b, w.one,
     init_params(_other(n_blocks=1), seed=0)), ValueError,
     r"tree_map: the trees do not match: an entry of tree is None but the same entry of rest"),
    ("to-device-complex-to-float32", lambda w: to_device((w.query * 1j,), "numpy", "float32"),
     TypeError, r"to_device: 0 is complex \(complex128\): dtype float32 would drop its"
     r" imaginary part"),
    # -- linear attention's population quantities ----------------------------------------
    ("linattn-covariance-complex-eigenvalues", lambda w: linattn.covariance(
        2, eigenvalues=numpy.array([1j, 1.0])), TypeError,
     r"eigenvalues must hold real numbers, got dtype complex128"),
    ("linattn-plateau-text-eigenvalues", lambda w: linattn.plateau_losses("ab", 4), TypeError,
     r"eigenvalues must hold real numbers, got dtype <U2"),
    ("linattn-converged-zero-covariance", lambda w: linattn.converged_predictor(
        numpy.zeros((2, 2)), 4), ValueError,
     r"converged_predictor: Γ = Λ \+ \(Λ \+ tr Λ I\)/N is singular: Lambda must be a"
     r" covariance"),
    ("linattn-converged-nan", lambda w: linattn.converged_predictor(
        numpy.full((2, 2), numpy.nan), 4), ValueError, r"Lambda contains NaN or infinity"),
    ("linattn-predictor-loss-nan", lambda w: linattn.predictor_loss(
        numpy.full((2, 2), numpy.nan), numpy.eye(2), 4), ValueError,
     r"A contains NaN or infinity"),
    ("load-device-without-xp", lambda w: load_checkpoint(_saved(w), device="gpu"), ValueError,
     r"Device not understood.*gpu"),
    ("null-space-update-without-u", lambda w: null_space_perturbation(
        w.patches[0]._replace(u_without=None), numpy.ones((5, 3))), ValueError,
     r"update\.u_without must have shape \(4, 3\) \(delta_W's \(4, 5, 3\)\), got None"),
    ("null-space-update-row-of-other-prompts", lambda w: null_space_perturbation(
        w.patches[0]._replace(row=w.patches[0].row[:2]), numpy.ones((5, 3))), ValueError,
     r"update\.row must have shape \(4, 3\) .*got \(2, 3\)"),
    ("sgd-init-bare-list", lambda w: sgd_init([numpy.ones(2)]), TypeError,
     r"^params must be an array, got list"),
    ("compression-default-needs-25", lambda w: compression_error(w.one, ONE, w.context,
     w.tokens[:, :3], w.tokens[:, 3:]), ValueError,
     r"got 5: calibration_queries hold 3 queries per prompt, so pass n_calibration with"
     r" entries ≤ 3 \(the default goes up to 25\)"),
    ("sgd-float64-grads-for-float32-params", lambda w: sgd_step(_set(w.params, numpy.float32),
     w.params, None, 0.1), TypeError, r"grads\.blocks\.0\.attn\.W_Q has dtype float64 but"
     r" params\.blocks\.0\.attn\.W_Q has float32: the step would turn params into float64"),
    ("sgd-float64-velocity-for-float32-params", lambda w: sgd_step(_set(w.params, numpy.float32),
     _set(w.params, numpy.float32), sgd_init(w.params, 0.5), 0.1, 0.5), TypeError,
     r"state\.velocity\.blocks\.0\.attn\.W_Q has dtype float64 but .* float32"),
    ("adam-float64-state-for-float32-params", lambda w: adam_step(_set(w.params, numpy.float32),
     _set(w.params, numpy.float32), adam_init(w.params), 0.1), TypeError,
     r"state\.m has dtype float64 but params have float32: the step would turn the parameters"
     r" into float64"),
    ("train-steps-beyond-any-array", lambda w: train(ONE, w.one, OptimizerSettings(), 10**20,
     4, 5, 2), ValueError, r"steps = 100000000000000000000: the record of one loss per step"
     r" .* cannot be allocated"),
    # -- the experiments' statistics, as the tutorials call them -----------------------------
    ("cos-frobenius-vectors", lambda w: cos_frobenius(w.query[0], w.query[1]), ValueError,
     r"cos_frobenius: A must be an array of matrices \(\.\.\., m, n\), got \(3,\)"),
    ("cos-frobenius-shapes", lambda w: cos_frobenius(w.patches[0].delta_W,
     w.patches[0].delta_W[:, :4]), ValueError,
     r"cos_frobenius: A \(4, 5, 3\) and B \(4, 4, 3\) must have one shape"),
    ("cos-frobenius-complex", lambda w: cos_frobenius(w.patches[0].delta_W * 1j,
     w.patches[0].delta_W), TypeError, r"cos_frobenius: A must hold real numbers, got dtype"
     r" complex128"),
    ("cos-frobenius-nan", lambda w: cos_frobenius(w.patches[0].delta_W,
     w.patches[0].delta_W * numpy.nan), ValueError, r"cos_frobenius: B contains NaN or infinity"),
    ("mean-se-axis-out-of-range", lambda w: mean_se(numpy.ones((4, 3)), axis=2), ValueError,
     r"mean_se: axis must be an int in \[-2, 2\) for values of shape \(4, 3\), got 2"),
    ("mean-se-one-number", lambda w: mean_se(3.0), ValueError,
     r"mean_se needs at least 2 samples, got one number"),
    ("loglog-slope-one-x", lambda w: loglog_slope([2.0, 2.0], [1.0, 4.0]), ValueError,
     r"loglog_slope needs at least two distinct x"),
    ("loglog-slope-infinity", lambda w: loglog_slope([1.0, numpy.inf], [1.0, 4.0]), ValueError,
     r"loglog_slope needs finite x and y"),
    ("loglog-slope-text", lambda w: loglog_slope(["a", "b"], [1.0, 4.0]), TypeError,
     r"loglog_slope: x must hold real numbers, got dtype <U1"),
    ("moving-average-no-points", lambda w: moving_average(numpy.arange(10.0), 3, max_points=0),
     ValueError, r"moving_average: max_points must be a positive int, got 0"),
    ("moving-average-window-float", lambda w: moving_average(numpy.arange(10.0), 2.5),
     ValueError, r"moving_average: window must be a positive int, got 2\.5"),
    ("moving-average-empty", lambda w: moving_average([], 3), ValueError,
     r"moving_average: values must be a non-empty 1-d array, got shape \(0,\)"),
    ("task-rng-name-int", lambda w: task_rng(0, 5), TypeError,
     r"task_rng: name must be a str \(the purpose\), got int"),
    ("removed-boolean-mask", lambda w: implicit_update(w.one, ONE, w.context, w.query,
     removed=numpy.array([True, False, True, False, False])), TypeError,
     r"removed must list context positions, got a boolean mask: .*numpy\.flatnonzero\(mask\)"),
    ("init-params-beyond-memory", lambda w: init_params(TransformerConfig(
        d_token=3, d_mlp=10**6, n_blocks=10**6)), ValueError,
     r"config describes 7e\+12 parameters \(5\.22e\+04 GiB as float64\), more than this"
     r" machine's memory"),
    ("lr-at-step-zero", lambda w: OptimizerSettings(warmup_steps=5).lr_at(0, 10), ValueError,
     r"step must be a positive int, got 0"),
    ("lr-at-beyond-the-run", lambda w: OptimizerSettings().lr_at(11, 10), ValueError,
     r"step must be in \[1, total_steps = 10\], got 11"),
    ("lr-at-text", lambda w: OptimizerSettings().lr_at("2", 10), ValueError,
     r"step must be a positive int, got '2'"),
    ("config-from-dict-none", lambda w: TransformerConfig.from_dict(None), TypeError,
     r"TransformerConfig\.from_dict: values must be a dict of fields, got NoneType"),
    ("config-from-dict-list", lambda w: TransformerConfig.from_dict([("d_token", 3)]), TypeError,
     r"TransformerConfig\.from_dict: values must be a dict of fields, got list"),
    ("order-sgd-query-of-other-width", lambda w: order_figure.online_sgd_predictions(
        w.batch.context_x, w.batch.context_y, w.batch.query_x[:, :1], 0.1), ValueError,
     r"online_sgd_predictions: x \(4, 5, 2\) needs x_q of shape \(4, 2\), got \(4, 1\)"),
    ("order-gd-steps-float", lambda w: order_figure.full_batch_gd_predictions(
        w.batch.context_x, w.batch.context_y, w.batch.query_x, 0.1, 2.5), ValueError,
     r"steps must be an int ≥ 0, got 2\.5"),
    ("order-sgd-lr-nan", lambda w: order_figure.online_sgd_predictions(
        w.batch.context_x, w.batch.context_y, w.batch.query_x, float("nan")), ValueError,
     r"lr must be a finite float ≥ 0"),
    ("order-spread-one-axis", lambda w: order_figure.spread_across_orders(numpy.ones(3)),
     ValueError, r"spread_across_orders: predictions must have shape \(R, B\) or"
     r" \(R, B, N\+1\) with R, B ≥ 1 \(orders, prompts\), got \(3,\)"),
    ("finetune-lone-inputs-of-tokens", lambda w: finetune_figure.lone_token_inputs(
        w.one, ONE, w.batch.context), ValueError,
     r"lone_token_inputs: x must have shape \(B, n, d\) with B, n ≥ 1 and d = config\.d_token"
     r" − 1 = 2, got \(4, 5, 3\)"),
    ("finetune-lone-inputs-config-text", lambda w: finetune_figure.lone_token_inputs(
        w.one, "ONE", w.batch.context_x), TypeError, r"config must be a TransformerConfig"),
    ("finetune-short-labels", lambda w: finetune_figure.finetune_W(w.one, ONE, *_lone(w),
     w.batch.context_y[:, :2], 0.1, 3), ValueError,
     r"finetune_W: y must have shape \(4, 5\), got \(4, 2\)"),
    ("finetune-lr-nan", lambda w: finetune_figure.finetune_W(w.one, ONE, *_lone(w),
     w.batch.context_y, float("nan"), 3), ValueError, r"lr must be a finite float > 0, got nan"),
    ("finetune-sgd-step-infinite", lambda w: finetune_figure.online_sgd_W(w.one, ONE,
     *_lone(w), w.batch.context_y, float("inf"), [1]), ValueError,
     r"online SGD: step must be a finite float > 0, got inf"),
    ("finetune-sgd-keep-int", lambda w: finetune_figure.online_sgd_W(w.one, ONE, *_lone(w),
     w.batch.context_y, 0.1, 2), TypeError, r"online SGD: keep must be a list of ints i"),
    ("finetune-ceiling-zero-row", lambda w: finetune_figure.alignment_ceiling(
        w.patches[0].delta_W, numpy.zeros((4, 3))), ValueError,
     r"alignment_ceiling: F and row must be non-zero for every prompt"),
    ("thought-query-tokens-seed-text", lambda w: thought_figure.query_tokens(4, 3, 2, "rng"),
     ValueError, r"rng must be an int ≥ 0 or a numpy Generator, got 'rng'"),
    ("thought-with-context-other-prompts", lambda w: thought_figure.with_context(w.one, ONE,
     w.context, w.tokens[:2]), ValueError,
     r"with_context: queries must have shape \(B, Q, D\) with the context's B = 4, got"
     r" \(2, 6, 3\)"),
    ("thought-patched-alone-no-patch", lambda w: thought_figure.patched_alone(w.one, ONE,
     w.tokens, None), TypeError,
     r"patched_alone: patch must be a ThoughtPatch or a BlockPatch, got NoneType"),
    ("linear-dynamics-projections-other-d", lambda w: linear_dynamics.projections(
        numpy.ones((3, 3, 3)), linattn.covariance(2), 5), ValueError,
     r"projections: effective must have shape \(n_recorded, 2, 2\) for the covariance's d = 2,"
     r" got \(3, 3, 3\)"),
    ("linear-dynamics-plateaus-of-no-epochs", lambda w: linear_dynamics.find_plateaus(
        numpy.arange(0), numpy.ones(0), 2, 0.1), ValueError,
     r"find_plateaus: epochs must be a non-empty 1-d array, got shape \(0,\)"),
    ("linear-dynamics-plateaus-window-zero", lambda w: linear_dynamics.find_plateaus(
        numpy.arange(10), numpy.ones(10), 0, 0.1), ValueError,
     r"window must be a positive int, got 0"),
    ("linear-dynamics-thin-no-points", lambda w: linear_dynamics.thin(numpy.arange(10), 0),
     ValueError, r"max_points must be a positive int, got 0"),
    ("linear-dynamics-drop-time-not-a-run", lambda w: linear_dynamics.drop_time((1, 2), 0.5),
     TypeError, r"traj must be a Trajectory \(train_gd\), got tuple"),
    ("figure-config-fast-text", lambda w: finetune_figure.finetune_config(fast="no"), TypeError,
     r"fast must be True or False, got str 'no'"),
    ("rnn-setting-fast-int", lambda w: experiment_models.rnn_setting(1), TypeError,
     r"fast must be True or False, got int 1"),
    # the figures' config records check their fields on creation
    ("identity-config-grid-half-zero", lambda w: identity_figure.IdentityConfig(grid_half=0),
     ValueError, r"IdentityConfig\.grid_half must be a positive int, got 0"),  # divided by 0
    ("identity-config-grid-limit-negative", lambda w: identity_figure.IdentityConfig(
        grid_limit=-1.0), ValueError, r"IdentityConfig\.grid_limit must be a finite float > 0"),
    ("positions-config-no-random-pairs", lambda w: positions_figure.PositionsConfig(
        n_random_pairs=0), ValueError, r"PositionsConfig\.n_random_pairs must be a positive int"),
    # (that was a NaN reference level, with NumPy's "Mean of empty slice")
    ("thought-config-calibration-zero", lambda w: thought_figure.ThoughtConfig(
        n_calibration=(0, 5)), ValueError,
     r"ThoughtConfig\.n_calibration\[0\] must be a positive int"),
    ("finetune-config-contexts-empty", lambda w: finetune_figure.FinetuneConfig(contexts=()),
     ValueError, r"FinetuneConfig\.contexts is empty"),
    ("order-config-lr-nan", lambda w: order_figure.OrderConfig(sgd_lr=float("nan")),
     ValueError, r"OrderConfig\.sgd_lr must be a finite float > 0, got nan"),
    ("linear-dynamics-config-rank2-text", lambda w: linear_dynamics.LinearDynamicsConfig(
        rank2="no"), TypeError, r"LinearDynamicsConfig\.rank2 must be True or False"),
    ("paper-model-seed-negative", lambda w: experiment_models.paper_model(w.tmp, seed=-1),
     ValueError, r"seed must be an integer ≥ 0, got -1"),
    ("trained-model-progress-int", lambda w: experiment_models.rnn_model(w.tmp, fast=True,
     progress=5), TypeError, r"progress must be a minimal_icl\.experiments\.Progress"),
    ("deep-model-out-none", lambda w: experiment_models.deep_model(None, fast=True), TypeError,
     r"out_dir must be a folder path, got NoneType"),
    # the folder and the model file are checked before the training (minutes), not at the save
    ("paper-model-out-in-a-file", lambda w: experiment_models.paper_model(
        _blocked_models(w) / "afile" / "sub"), ExperimentError,
     r"cannot write to output folder '.*afile/sub': Not a directory"),
    ("deep-model-file-is-a-folder", lambda w: experiment_models.deep_model(
        _blocked_models(w)), ValueError, r"the model file '.*deep_model\.npz' is a directory"),
    ("progress-quiet-text", lambda w: Progress(quiet="no"), TypeError,
     r"quiet must be True or False, got str 'no'"),
    ("progress-stream-path", lambda w: Progress(stream="log.txt"), TypeError,
     r"stream must be a text stream \(sys\.stderr, io\.StringIO\(\)\), got str"),
    ("sgd-params-not-arrays", lambda w: sgd_step([1.0, 2.0], w.query, None, 0.1), TypeError,
     r"params must be an array \(or a record of arrays\), got list"),
    ("adam-params-text", lambda w: adam_step("params", w.query, adam_init(w.query), 0.1),
     TypeError, r"params must be an array \(or a record of arrays\), got str"),
    # -- the gradient checks the tutorials run ----------------------------------------------
    ("gradcheck-integer-x", lambda w: gradcheck.numerical_gradient(
        lambda x: float(numpy.sum(x * x)), numpy.ones(3, dtype=int)), TypeError,
     r"x: dtype int64 is refused"),
    ("gradcheck-step-zero", lambda w: gradcheck.numerical_gradient(
        lambda x: float(numpy.sum(x * x)), numpy.ones(3), 0.0), ValueError,
     r"step must be a finite float > 0, got 0\.0"),
    ("gradcheck-gradient-of-other-shape", lambda w: gradcheck.check_gradients(
        lambda x: float(numpy.sum(x * x)), numpy.ones(3), numpy.ones(2)), ValueError,
     r"check_gradients: the gradient for 'input' has shape \(2,\), its array \(3,\)"),
    ("gradcheck-rtol-negative", lambda w: gradcheck.assert_gradients_ok({"W": 0.1}, -1.0),
     ValueError, r"rtol must be a finite float ≥ 0, got -1\.0"),
    ("gradcheck-rng-text", lambda w: gradcheck.random_like(w.query, "rng"), ValueError,
     r"rng must be an int ≥ 0 or a numpy Generator, got 'rng'"),
    ("load-metadata-not-text", lambda w: load_checkpoint(_with_entry(w, metadata=numpy.array(5))),
     ValueError, r"one\.npz: entry 'metadata' must be a text scalar, got int64 \(\)$"),
    ("gradcheck-errors-not-a-dict", lambda w: gradcheck.assert_gradients_ok([0.1]), TypeError,
     r"errors must be the dict of check_gradients or check_layer, got list"),
    ("gradcheck-complex-relative-error", lambda w: gradcheck.relative_error(
        numpy.ones(2) * 1j, numpy.ones(2)), TypeError,
     r"relative_error: analytic is complex \(complex128\); gradients are real"),
    ("linear-dynamics-thin-none", lambda w: linear_dynamics.thin(None), TypeError,
     r"thin: epochs must hold real numbers, got dtype object"),
    ("heldout-table-not-a-table", lambda w: heldout_table(None), TypeError,
     r"heldout_table: table must be the dict of rows that compare_with_baselines returns"),
    # -- the exercise checks' own arguments (the reader's function is never called) ---------
    ("exercise-01-seed-negative", lambda w: _exercise(1).check_softmax_backward(
        _unwritten, seed=-1), ValueError, r"seed must be an int ≥ 0, got -1"),
    ("exercise-01-explicit-seed-bool", lambda w: _exercise(1).check_softmax_backward_explicit(
        _unwritten, seed=True), ValueError, r"seed must be an int ≥ 0, got True"),
    ("exercise-02-config-text", lambda w: _exercise(2).check_delta_W(
        _unwritten, w.one, "ONE"), TypeError, r"config must be a TransformerConfig, got str"),
    ("exercise-02-no-context", lambda w: _exercise(2).check_delta_W(
        _unwritten, w.one, ONE, n_context=0), ValueError,
     r"n_context must be a positive int, got 0"),
    ("exercise-03-negative-prompts", lambda w: _exercise(3).check_null_space(
        _unwritten, w.one, ONE, n_prompts=-1), ValueError,
     r"n_prompts must be a positive int, got -1"),
    ("exercise-03-seed-float", lambda w: _exercise(3).check_null_space(
        _unwritten, w.one, ONE, seed=1.5), ValueError, r"seed must be an int ≥ 0, got 1\.5"),
    ("exercise-07-seed-text", lambda w: _exercise(7).check_cos_frobenius(
        _unwritten, seed="0"), ValueError, r"seed must be an int ≥ 0, got '0'"),
    ("exercise-08-seed-negative", lambda w: _exercise(8).check_von_oswald_weights(
        _unwritten, seed=-1), ValueError, r"seed must be an int ≥ 0, got -1"),
    ("exercise-09-spread-seed-float", lambda w: _exercise(9).check_order_spread(
        _unwritten, seed=1.5), ValueError, r"seed must be an int ≥ 0, got 1\.5"),
    ("exercise-09-rising-seed-bool", lambda w: _exercise(9).check_fraction_of_rising_steps(
        _unwritten, seed=True), ValueError, r"seed must be an int ≥ 0, got True"),
    ("exercise-12-query-seed-negative", lambda w: _exercise(12).check_rnn_query_alone(
        _unwritten, seed=-1), ValueError, r"seed must be an int ≥ 0, got -1"),
    ("exercise-12-backward-seed-text", lambda w: _exercise(12).check_rnn_step_backward(
        _unwritten, seed="a"), ValueError, r"seed must be an int ≥ 0, got 'a'"),
]


@pytest.mark.parametrize("call, error, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_gets_a_clear_error(world, call, error, message):
    """The call raises ``error`` (a ValueError or TypeError) and the message names the
    argument and the problem."""
    assert issubclass(error, (ValueError, TypeError))
    with numpy.errstate(all="ignore"), pytest.raises((ValueError, TypeError)) as info:
        call(world)
    assert type(info.value) is error or isinstance(info.value, error), repr(info.value)
    assert re.search(message, str(info.value)), str(info.value)


def test_the_battery_is_large_and_its_ids_distinct():
    ids = [c[0] for c in CASES]
    assert len(ids) >= 200 and len(set(ids)) == len(ids)


# -- what must keep working ---------------------------------------------------------------


def test_tokens_scaled_to_1e_minus_300_are_valid_and_the_identity_holds(world):
    """Normal numbers however small are valid: at 1e-300 the patched query reproduces the
    prompt's output (Theorem 2.2) to IDENTITY_RTOL, relative to the output's own scale."""
    context, query = world.context * 1e-300, world.query * 1e-300
    for params, config in ((world.one, ONE), (world.params, STACK)):
        tokens = numpy.concatenate([context, query[:, None]], axis=1)
        full, _ = forward(params, config, tokens)
        updates = implicit_update(params, config, context, query)
        patched, _ = forward(params, config, query[:, None], patches=updates)
        assert numpy.all(numpy.isfinite(patched))
        assert relative_residual(patched[:, -1], full[:, -1]) <= IDENTITY_RTOL


def test_paths_at_1e_minus_300_return_an_infinite_step_size_without_a_warning(world):
    """At tokens of 1e-300, η_x = 1/‖A(x)‖² exceeds the largest float: the paths return
    it as infinity (docs/validation.md), silently, with finite columns."""
    context, query = world.context * 1e-300, world.query * 1e-300
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any RuntimeWarning fails the test
        path = implicit_path(world.one, ONE, context, query)
        factorised = factorised_path(world.one, ONE, context, query)
    assert numpy.all(numpy.isinf(path.step_size))
    assert numpy.all(numpy.isfinite(path.columns))
    assert numpy.any(numpy.isinf(factorised.step_sizes))


@pytest.mark.parametrize("answer, message", [
    (numpy.array([0.5 + 0j]), r"x is complex \(complex128\): expected real numbers"),
    ("0.5", r"x: expected an array of numbers, got str of dtype <U3"),
], ids=["complex", "text"])
def test_an_exercise_answer_of_complex_numbers_or_text_is_wrong(answer, message):
    """An exercise check does not cast a complex answer to its real part (with a
    ComplexWarning) nor parse text as a number: both are wrong answers, named."""
    from minimal_icl.exercises import ExerciseError, check_scalar

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ExerciseError, match=message):
            check_scalar("x", answer, 0.5)


def test_a_checkpoint_path_of_bytes_is_saved_and_loaded(world):
    """A path given as bytes (as os.fsencode makes it) is a path: save_checkpoint took
    it to a TypeError of os.path's ("Can't mix strings and bytes")."""
    path = world.tmp / "bytes.npz"
    save_checkpoint(bytes(path), world.one, ONE)
    loaded = load_checkpoint(bytes(path), config=ONE)
    assert all(numpy.array_equal(a, b) for (_, a), (_, b) in
               zip(tree_leaves(loaded.params), tree_leaves(world.one)))


def test_cos_frobenius_of_matrices_near_the_largest_float(world):
    """‖A‖²_F beyond the largest float: the cosine is still measured (it does not depend on
    scale), without a warning, instead of infinity over infinity."""
    A, B = world.patches[0].delta_W, world.patches[1].delta_W
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        huge = cos_frobenius(A * 1e200, B * 1e200)
    assert relative_residual(huge, cos_frobenius(A, B)) <= IDENTITY_RTOL


def test_complex_arrays_of_another_library_are_named():
    """The complex checks read the dtype through the array API where it has no NumPy
    ``kind`` (array_api_strict): to_device named NumPy's complex arrays only, and let an
    array_api_strict one lose its imaginary part with a ComplexWarning."""
    import array_api_strict

    z = array_api_strict.asarray(numpy.ones((2, 2, 2)) * 1j)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(TypeError, match=r"to_device: 0 is complex .* would drop its"):
            to_device((z,), "numpy", "float32")
        with pytest.raises(TypeError, match=r"cos_frobenius: A must hold real numbers"):
            cos_frobenius(z, array_api_strict.ones((2, 2, 2)))


def test_to_device_moves_numpy_scalars():
    """A NumPy scalar has a shape and a dtype but no DLPack: to_device moved it with
    numpy.from_dlpack, an AttributeError."""
    moved = to_device((numpy.float32(0.5), numpy.float64(2.0)), "numpy", "float64")
    assert [float(a) for a in moved] == [0.5, 2.0]
    assert all(a.dtype == numpy.float64 for a in moved)


def test_a_setup_of_numpy_numbers_is_stored_as_json(world):
    """NumPy integers and floats count as numbers in OptimizerSettings and TrainingSetup
    (docs/validation.md), and are kept as Python numbers: a checkpoint's metadata holds
    the setup as JSON, which refused numpy.int64 after the training."""
    optimizer = OptimizerSettings(lr=numpy.float32(0.5), warmup_steps=numpy.int64(3))
    setup = TrainingSetup(ONE, optimizer, steps=numpy.int64(1), batch_size=numpy.int32(4),
                          n_context=numpy.int64(5), d=numpy.int64(2), noise=numpy.float64(0.1))
    path = world.tmp / "numpy-setup.npz"
    save_checkpoint(path, world.one, ONE, metadata={"setup": setup.to_dict()})
    stored = load_checkpoint(path).metadata["setup"]
    assert TrainingSetup.from_dict(stored) == setup
    assert type(setup.steps) is int and type(setup.optimizer.lr) is float


def test_relative_residual_of_numbers_near_the_largest_float():
    """a − b beyond the largest float: the residual is still measured (2, not infinity),
    without a warning."""
    a = numpy.array([1e308, 1.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert relative_residual(a, -a) == 2.0
        assert relative_residual(a, a) == 0.0


@pytest.mark.parametrize(
    "removed", [[0, 2], (2, 0), range(3), {1, 2}, numpy.array([0, 4]), []], ids=repr
)
def test_every_collection_of_positions_is_accepted(world, removed):
    """Lists, tuples, ranges, sets and 1-d integer arrays name the same positions."""
    one = implicit_update(world.one, ONE, world.context, world.query, removed=removed)
    same = implicit_update(world.one, ONE, world.context, world.query, removed=sorted(removed))
    assert numpy.array_equal(one[0].delta_W, same[0].delta_W)


@pytest.mark.parametrize(
    "call",
    [
        lambda w: forward(w.params, STACK, w.tokens * numpy.nan),
        lambda w: forward(w.params, STACK, numpy.where(w.tokens > 0, numpy.inf, w.tokens)),
        lambda w: forward(w.one, ONE, w.tokens * 1e200),
        lambda w: forward(w.params, STACK, w.tokens * 1e160),
        lambda w: implicit_update(w.params, STACK, w.context * 1e200, w.query * 1e200),
        lambda w: implicit_path(w.one, ONE, w.context * 1e200, w.query * 1e200),
        lambda w: factorised_path(w.one, ONE, w.context * 1e200, w.query * 1e200),
        lambda w: linear_attention_context_vector(w.one.blocks[0].attn, 2, w.context * 1e200,
                                                  w.query * 1e200),
        lambda w: minimum_norm_solution(numpy.full((4, 5), 1e308), w.query * 1e-10),
        lambda w: ridge_predict(w.batch._replace(tokens=w.batch.tokens * 1e200), 0.1),
        lambda w: one_step_gd_predict(w.batch, 1e308),
    ],
    ids=["nan", "inf", "overflow", "layernorm-overflow", "implicit-update-overflow",
         "implicit-path-overflow", "factorised-path-overflow", "linear-attention-overflow",
         "minimum-norm-overflow", "ridge-overflow", "one-step-gd-overflow"],
)
def test_the_error_path_prints_no_numpy_warning(world, call):
    """forward, the paths of Proposition 3.1, the theorems' small functions and the
    baselines check finiteness after computing; the RuntimeWarnings of the computation
    (overflow, invalid value) are silenced, so the ValueError is the only message."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a RuntimeWarning would fail the test
        with pytest.raises(ValueError, match=r"NaN or infinity|overflowed"):
            call(world)


def test_numpy_integers_are_ints(world):
    """NumPy integers count as ints wherever an int is asked for: seeds, positions,
    sizes, head counts, K values (bool does not)."""
    updates = _every(world)
    for a, b in zip(at_position(updates, numpy.int64(2))[0], at_position(updates, 2)[0]):
        assert numpy.array_equal(a, b)
    weights = von_oswald_attention(numpy.int64(2), numpy.float32(0.5), numpy.int32(5))[0]
    for a, b in zip(weights, von_oswald_attention(2, 0.5, 5)[0]):
        assert numpy.array_equal(a, b)
    for a, b in zip(tree_map(lambda a: a, init_params(ONE, seed=numpy.int64(3))).blocks[0].mlp,
                    init_params(ONE, seed=3).blocks[0].mlp):
        assert numpy.array_equal(a, b)
    queries = numpy.concatenate([world.query[:, None], world.query[:, None] * 2.0], axis=1)
    errors = compression_error(world.one, ONE, world.context, queries, queries,
                               n_calibration=numpy.array([1, 2]))
    assert errors.n_calibration == (1, 2) and all(type(K) is int for K in errors.n_calibration)
    attn = world.one.blocks[0].attn
    assert numpy.array_equal(
        linear_attention_context_vector(attn, numpy.int64(2), world.context, world.query),
        linear_attention_context_vector(attn, 2, world.context, world.query),
    )


def test_a_zero_step_is_no_step(world):
    """η = 0 is valid (the left end of a sweep over η): θ_1 = θ_0, so the prediction is
    ⟨θ_0, x_q⟩, by the explicit step and by von Oswald's layer alike."""
    theta0 = numpy.array([0.5, -1.0])
    expected = world.batch.query_x @ theta0
    assert relative_residual(one_step_gd_predict(world.batch, 0.0, theta0), expected) <= (
        IDENTITY_RTOL
    )
    assert relative_residual(von_oswald_predict(world.tokens, 0.0, theta0), expected) <= (
        IDENTITY_RTOL
    )


def test_an_empty_removed_set_gives_a_zero_context_vector(world):
    """|Y| = 0 is valid for the closed form: the memory Σ_y v_y k_yᵀ is an empty sum."""
    attn = world.one.blocks[0].attn
    delta = linear_attention_context_vector(attn, 2, world.context[:, :0], world.query)
    assert delta.shape == world.query.shape and not numpy.any(delta)


def test_the_null_space_perturbation_of_a_position_axis(world):
    """null_space_perturbation accepts updates with a position axis: Z⊥ annihilates each
    position's a = u_∅, so (ΔW + Z⊥) a = ΔW a at every position, and ‖ΔW + Z⊥‖_F > ‖ΔW‖_F."""
    update = _every(world)[0]  # delta_W (4, 6, 5, 3)
    Z = numpy.random.default_rng(0).standard_normal((5, 3))
    perturbed = null_space_perturbation(update, Z)
    a = update.u_without[..., None]  # (4, 6, 3, 1)
    assert relative_residual(perturbed @ a, update.delta_W @ a) <= IDENTITY_RTOL
    assert numpy.all(numpy.linalg.norm(perturbed, axis=(-2, -1))
                     > numpy.linalg.norm(update.delta_W, axis=(-2, -1)))


def test_float32_parameters_with_float64_tokens_run(world):
    """Mixed float dtypes between tokens and parameters follow the array API's promotion."""
    out, _ = forward(to_device(world.params, "numpy", numpy.float32), STACK, world.tokens)
    assert out.dtype == numpy.float64


def test_a_layout_with_the_same_width_is_caught_by_the_checkpoint(world, tmp_path):
    """n_heads·d_head = 2·2 and 4·1 give arrays of the same shapes: the arrays cannot show
    the layout, and the configuration stored in the checkpoint does."""
    path = tmp_path / "m.npz"
    save_checkpoint(path, world.params, STACK)
    with pytest.raises(ValueError, match=r"n_heads: file 2 != expected 4"):
        load_checkpoint(path, config=_other(n_heads=4, d_head=1))


# -- CuPy where it cannot run ---------------------------------------------------------------


@pytest.mark.skipif(gpu_available(), reason="CuPy runs here")
@pytest.mark.parametrize(
    "call",
    [
        lambda w: to_device(w.params, "cupy"),
        lambda w: init_params(STACK, xp="cupy"),
        lambda w: regression_prompts(4, 5, 2, xp="cupy"),
        lambda w: load_checkpoint(w.tmp / "absent.npz", xp="cupy"),
    ],
    ids=["to_device", "init_params", "regression_prompts", "load_checkpoint"],
)
def test_cupy_asked_for_where_it_is_missing(world, call, monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # as if not installed
    require_cupy.cache_clear()
    with pytest.raises(BackendUnavailableError) as info:
        call(world)
    error = info.value
    assert isinstance(error, ValueError) and isinstance(error, ImportError)
    assert "CuPy was asked for but cannot be imported" in str(error)
    assert "pip install -e '.[gpu]'" in str(error) and "cupy-cuda13x" in str(error)
    assert error.__cause__ is None and error.__suppress_context__


def _fake_cupy(get_count):
    runtime = types.SimpleNamespace(getDeviceCount=get_count)
    return types.SimpleNamespace(cuda=types.SimpleNamespace(runtime=runtime),
                                 empty=lambda n: None)


class CUDARuntimeError(RuntimeError):
    pass


def _no_driver():
    raise CUDARuntimeError("cudaErrorInsufficientDriver: CUDA driver version is\n insufficient")


@pytest.mark.parametrize(
    "get_count, message",
    [
        (_no_driver, r"cannot use a GPU \(cudaErrorInsufficientDriver: CUDA driver version is"
                     r" insufficient\); check the NVIDIA driver with nvidia-smi"),
        (lambda: 0, r"CuPy is installed but finds no GPU"),
    ],
    ids=["no-driver", "no-gpu"],
)
def test_cupy_without_a_usable_gpu(monkeypatch, get_count, message):
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(get_count))
    require_cupy.cache_clear()
    try:
        with pytest.raises(BackendUnavailableError, match=message) as info:
            resolve_namespace("cupy")
        assert "pip install" in str(info.value) and "\n" not in str(info.value)
    finally:
        require_cupy.cache_clear()


def test_a_usable_cupy_is_checked_once(monkeypatch):
    calls = []
    fake = _fake_cupy(lambda: calls.append(1) or 1)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    require_cupy.cache_clear()
    try:
        assert backend_module.require_cupy() is fake and require_cupy() is fake
        assert calls == [1]
    finally:
        require_cupy.cache_clear()


def test_the_model_runs_on_numpy_by_name(world):
    params = init_params(ONE, seed=0, xp="numpy")
    assert isinstance(params.blocks[0].mlp.W1, numpy.ndarray)
    assert resolve_namespace(None) is numpy and resolve_namespace("numpy") is numpy
    patch = BlockPatch(delta_W=numpy.zeros((4, 5, 3)), delta_b=numpy.zeros((4, 3)))
    out, _ = forward(params, ONE, world.tokens, patches=(patch,))
    assert out.shape == world.tokens.shape


# -- what the checks cost: values read back from the device ----------------------------------


def test_forward_reads_one_boolean_and_a_training_step_none(world, monkeypatch):
    """Shapes, dtypes and the parameters against the configuration are checked without
    reading any array value; ``forward`` then reads one boolean (finite tokens and output,
    no subnormal tokens), and a training step reads nothing (the loop checks its losses)."""
    import array_api_strict

    from minimal_icl.data import RegressionBatch
    from minimal_icl.train import train_step

    device = array_api_strict.Device("device1")
    Array = type(array_api_strict.asarray(0.0))
    reads = []
    for name in ("__bool__", "__float__", "__int__", "__index__", "__array__"):
        original = getattr(Array, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            reads.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(Array, name, counted)

    def move(a):
        return array_api_strict.asarray(a, device=device)

    params = tree_map(move, world.params)
    batch = regression_prompts(4, 5, 2, seed=1)
    batch = RegressionBatch(move(batch.tokens), move(batch.target), move(batch.w))
    forward(params, STACK, batch.tokens)
    assert reads == ["__bool__"]
    reads.clear()
    settings = OptimizerSettings()
    train_step(params, adam_init(params), STACK, batch, settings, 1e-3)
    assert reads == []


@pytest.mark.skipif(numpy.dtype(numpy.longdouble).itemsize <= 8,
                    reason="long double is float64 on this platform")
def test_extended_precision_is_refused(world):
    with pytest.raises(TypeError, match=r"tokens: dtype float\d+ is refused.*extended precision"):
        forward(world.one, ONE, world.tokens.astype(numpy.longdouble))


def test_numpy_integers_are_ints_in_the_config():
    """A NumPy integer counts as an int (docs/validation.md): the config stores a plain int,
    equal to and hashing like the one built from Python ints."""
    config = TransformerConfig(d_token=numpy.int64(3), n_heads=numpy.int32(2))
    assert type(config.d_token) is int and type(config.n_heads) is int
    assert config == TransformerConfig(d_token=3, n_heads=2)
    assert hash(config) == hash(TransformerConfig(d_token=3, n_heads=2))


def test_ridge_lambda_is_the_squared_ratio_wherever_it_is_a_float():
    """λ = (σ/τ)² depends on the ratio only: τ = 1e-200 with σ = 1e-200 gives 1 (σ²/τ²
    divided 0 by 0), and λ = σ²/τ² where both squares are normal."""
    assert ridge_lambda(1e-200, 1e-200) == 1.0
    assert ridge_lambda(0.3, 2.0) == pytest.approx(0.09 / 4.0, rel=IDENTITY_RTOL)
    assert ridge_lambda(1e-163, 1.0) == 0.0  # 1e-326: below the smallest float


def test_sgd_without_momentum_takes_its_own_state_or_none(world):
    """μ = 0: the state of sgd_init(params), the one sgd_step returns, and None give one step."""
    state = sgd_init(world.params)
    stepped, returned = sgd_step(world.params, world.params, state, 0.1)
    assert returned == state
    again, _ = sgd_step(world.params, world.params, None, 0.1)
    assert all(numpy.array_equal(a, b)
               for (_, a), (_, b) in zip(tree_leaves(stepped), tree_leaves(again)))
    W1 = world.params.blocks[0].mlp.W1
    assert numpy.array_equal(stepped.blocks[0].mlp.W1, W1 - 0.1 * W1)  # θ − lr g with g = θ


def test_linattn_names_an_array_of_another_library():
    """linattn runs on NumPy only: an array_api_strict array of a valid shape is a
    TypeError that says so (its shape was quoted as if it were wrong before)."""
    import array_api_strict

    params = linattn.init_merged(2, n_heads=1, scale=0.1, seed=0)
    X = array_api_strict.asarray(numpy.ones((3, 3, 5)))
    with pytest.raises(TypeError, match=r"X must be a NumPy array \(this module runs on NumPy"):
        linattn.merged_forward(X, params)


def test_adam_step_fast_checks_gradients_and_state_as_adam_step_does():
    """adam_step_fast accepted a float32 state and float32 gradients for float64
    parameters, and gradients of other shapes failed in NumPy's broadcasting (or, of the
    same size, were silently misplaced); now each is named, as by adam_step."""
    from minimal_icl.optim_fast import adam_step_fast

    p = init_params(STACK, seed=0)
    g = init_params(STACK, seed=1)
    state = adam_init(p)
    f32 = state._replace(m=state.m.astype(numpy.float32), v=state.v.astype(numpy.float32))
    with pytest.raises(TypeError, match=r"state.m has dtype float32 but params have float64"):
        adam_step_fast(p, g, f32, 1e-3)
    with pytest.raises(TypeError, match=r"grads.blocks.0.attn.W_Q has dtype float32"):
        adam_step_fast(p, tree_map(lambda a: a.astype(numpy.float32), g), state, 1e-3)
    mlp = g.blocks[0].mlp
    swapped = g._replace(blocks=(g.blocks[0]._replace(mlp=mlp._replace(W1=mlp.W2, W2=mlp.W1)),)
                         + g.blocks[1:])
    with pytest.raises(ValueError, match=r"grads.blocks.0.mlp.W1 has shape"):
        adam_step_fast(p, swapped, state, 1e-3)
    # and given back what it returned, the step still checks the gradients
    p1, s1 = adam_step_fast(p, g, state, 1e-3)
    with pytest.raises(ValueError, match=r"grads.blocks.0.mlp.W1 has shape"):
        adam_step_fast(p1, swapped, s1, 1e-3)
