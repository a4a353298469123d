"""Checks for tutorial 05: one step of the implicit gradient path (Proposition 3.1 in v1).

The reader writes one step of the path that the context tokens trace in weight space,

    G_i     = W_0 (A_i − A_{i+1}) A(x)ᵀ           the gradient of L_i(W) = trace(G_iᵀ W),
    W_{i+1} = W_i − η_x G_i,  η_x = 1/‖A(x)‖²,

and the check compares both with :func:`minimal_icl.dynamics.implicit_path`
(``ImplicitPath.gradient(i)`` and ``ImplicitPath.weights(i + 1)``) on a fresh random block.
Reference: Dherin et al. (2025), arXiv:2507.16003, Proposition 3.1 (v1); the paper writes
the step size as h and the gradient as Δ_i (docs/notation.md).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy

from ..config import TransformerConfig
from ..data import regression_prompts
from ..dynamics import ImplicitPath, implicit_path
from ..implicit import outer  # column ⊗ row: (B, M), (B, D) -> (B, M, D)
from ..params import init_params
from ..tolerances import relative_residual
from . import MISTAKE_RTOL, ExerciseError, _as_host, call_answer, check_array

__all__ = ["PathStepCase", "path_step_case", "check_path_step"]


class PathStepCase(NamedTuple):
    """The inputs of one step i of the path, for B prompts, and the package's path."""

    path: ImplicitPath
    i: int
    W_i: numpy.ndarray  # (B, M, D)  the weight after i tokens
    W_0: numpy.ndarray  # (M, D)     the block's first MLP weight
    A_i: numpy.ndarray  # (B, D)     A(c_1..c_i, x) at the MLP input
    A_next: numpy.ndarray  # (B, D)  A(c_1..c_{i+1}, x)
    A_x: numpy.ndarray  # (B, D)     A(x) = A_0, the query alone


def path_step_case(i: int = 3, seed: int = 0) -> PathStepCase:
    """A random one-block softmax model (2 heads, M = 16) on 6 prompts of 8 context pairs.

    i ≥ 1, so that A_i ≠ A(x) and a row taken from A_i is told apart from A(x).
    Raises ValueError unless 1 ≤ i ≤ 7 (the step i → i + 1 must exist).
    """
    if isinstance(i, bool) or not isinstance(i, int) or not 1 <= i <= 7:
        raise ValueError(f"path_step_case: i must be an int in [1, 7], got {i!r}")
    config = TransformerConfig(d_token=3, n_blocks=1, n_heads=2, d_head=4, d_mlp=16,
                               attention="softmax", activation="relu")
    params = init_params(config, seed=seed)
    batch = regression_prompts(6, n_context=8, d=2, seed=seed + 1)
    path = implicit_path(params, config, batch.context, batch.query)
    A = numpy.asarray(path.A_prefix)
    return PathStepCase(path, i, numpy.asarray(path.weights(i)), numpy.asarray(path.W0),
                        A[:, i], A[:, i + 1], numpy.asarray(path.A_query))


def check_path_step(step: Callable, i: int = 3, seed: int = 0) -> None:
    """Check ``step(W_i, W_0, A_i, A_next, A_x) -> (G_i, W_next)`` against implicit_path.

    Shapes: W_i (B, M, D), W_0 (M, D), A_i, A_next, A_x (B, D); G_i and W_next (B, M, D).
    Expected: G_i = path.gradient(i), W_next = path.weights(i + 1). W_next is compared
    through the increment W_next − W_i (the part the step adds), so that a wrong step
    size is not hidden behind the much larger W_i.
    Raises ExerciseError with a hint naming the mistake.
    """
    case = path_step_case(i, seed)
    answer = call_answer(step, case.W_i.copy(), case.W_0.copy(), case.A_i.copy(),
                         case.A_next.copy(), case.A_x.copy(), name="path_step",
                         on_value_error="W_0 is (M, D) and A_i (B, D): the column is"
                         " `(A_i - A_next) @ W_0.T` (B, M); η_x is one number per prompt, (B,),"
                         " so it scales a (B, M, D) stack as `eta[:, None, None]`")
    if not isinstance(answer, (tuple, list)) or len(answer) != 2:
        raise ExerciseError("path_step must return two arrays: (G_i, W_next)")
    # a NumPy scalar becomes a 0-d array, so that it gets a shape hint
    G, W_next = (numpy.asarray(v) if isinstance(v, numpy.generic) else v for v in answer)

    W0, A_i, A_next, A_x = case.W_0, case.A_i, case.A_next, case.A_x
    norm_x = numpy.linalg.norm(A_x, axis=-1)[:, None, None]  # (B, 1, 1) ‖A(x)‖
    G_right = numpy.asarray(case.path.gradient(i))
    G_host = _as_host(G, "G_i")
    if G_host.shape == G_right.shape and relative_residual(
            G_host, numpy.asarray(case.path.weights(i + 1))) <= MISTAKE_RTOL:
        raise ExerciseError("your first array is W_{i+1}: return (G_i, W_next), in that order")
    check_array("G_i", G, G_right, mistakes=[
        ("the difference has the wrong sign: G_i = W_0 (A_i − A_{i+1}) A(x)ᵀ, the earlier"
         " state first (the step subtracts η_x G_i and must ADD W_0 (A_{i+1} − A_i) …)",
         outer((A_next - A_i) @ W0.T, A_x)),
        ("the row is A_i; the row of every G_i is A(x) = A_0, the query alone (that is why"
         " the whole path stays rank 1)", outer((A_i - A_next) @ W0.T, A_i)),
        ("the row is A_{i+1}; the row of every G_i is A(x) = A_0, the query alone",
         outer((A_i - A_next) @ W0.T, A_next)),
        ("G_i is the gradient alone: the step size η_x = 1/‖A(x)‖² belongs in the step"
         " W_{i+1} = W_i − η_x G_i, not in G_i", G_right / norm_x**2),
        ("the column uses the current weight W_i; it uses the block's weight W_0:"
         " G_i = W_0 (A_i − A_{i+1}) A(x)ᵀ",
         outer(numpy.einsum("bmd,bd->bm", case.W_i, A_i - A_next), A_x)),
        ("the row is A(x)/‖A(x)‖; the row of G_i is A(x) itself, and the division by"
         " ‖A(x)‖² is the step size η_x, in the step", G_right / norm_x),
        ("the column is A_i − A_{i+1} without W_0: G_i = W_0 (A_i − A_{i+1}) A(x)ᵀ, its"
         " column `(A_i - A_next) @ W_0.T` of shape (B, M)", outer(A_i - A_next, A_x)),
    ])

    W_right = numpy.asarray(case.path.weights(i + 1))
    W_next = _as_host(W_next, "W_next")
    if W_next.shape != W_right.shape:
        check_array("W_next", W_next, W_right)  # raises the shape hint
    increment = W_right - case.W_i  # − η_x G_i
    check_array("W_{i+1} − W_i (the increment your step adds)", W_next - case.W_i, increment,
                mistakes=[
        ("the step size η_x is missing: W_{i+1} = W_i − η_x G_i with η_x = 1/‖A(x)‖²", -G_right),
        ("η_x = 1/‖A(x)‖ is not squared: η_x = 1/‖A(x)‖²", -G_right / norm_x),
        ("the step goes uphill: gradient DEScent subtracts, W_{i+1} = W_i − η_x G_i",
         -increment),
        ("the step starts from W_0; it starts from the current weight W_i",
         W0 + increment - case.W_i),
        ("η_x is one number per prompt: sum the squares of A(x) over D only (axis=-1), not"
         " over the whole batch", -G_right / numpy.sum(A_x * A_x)),
        ("the step size is 1/‖A_i‖²; η_x = 1/‖A(x)‖² uses the query alone, the same at"
         " every step", -G_right / numpy.sum(A_i * A_i, axis=-1)[:, None, None]),
        ("the step size is 1/‖A_{i+1}‖²; η_x = 1/‖A(x)‖² uses the query alone, the same at"
         " every step", -G_right / numpy.sum(A_next * A_next, axis=-1)[:, None, None]),
        ("‖A(x)‖² is summed over the prompts (axis=0), one number per coordinate: each"
         " prompt's η_x = 1/‖A(x)‖² sums its own D squares (axis=-1), then"
         " `eta_x[:, None, None]`", -G_right / numpy.sum(A_x * A_x, axis=0)),
        ("‖A(x)‖² is the sum of the D squares, not their mean: numpy.sum, not numpy.mean",
         -G_right / numpy.mean(A_x * A_x, axis=-1)[:, None, None]),
    ])
