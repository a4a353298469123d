"""Tutorial 11's checks: the patch of one position and the thought patch pass when right
and name each typical mistake."""

from __future__ import annotations

import numpy
import pytest

from minimal_icl.exercises import ExerciseError
from minimal_icl.exercises.tutorial_11 import (
    _states,
    check_position_patch,
    check_thought_delta,
    position_case,
    thought_case,
)
from minimal_icl.tolerances import relative_residual


def position_patch_with(row="alone", power=2, column="delta", position="t", lone="own",
                        bias="delta", transpose=False, column_product="W.T", norm="prompt",
                        index="position"):
    """A per-position patch with one switch per typical mistake (the defaults are right)."""

    def position_patch(W, u_C, h_C, u_0, h_0, t):
        if position == "every":  # no position picked: every position's patch at once
            du = u_C - u_0
            rows = u_0 / numpy.sum(u_0**2, -1, keepdims=True)  # (B, T, D)
            delta_W = (du @ W.T)[..., None] * rows[..., None, :]  # (B, T, M, D)
            return delta_W, h_C - h_0
        if index == "prompt":  # u_C[t]: the first axis is the prompts, so this is prompt t
            u_C, h_C, u_0, h_0 = (numpy.swapaxes(v, 0, 1) for v in (u_C, h_C, u_0, h_0))
        s = {"t": t, "last": -1, "before": t - 1, "after": t + 1}[position]
        u_t, h_t = u_C[:, s], h_C[:, s]
        u_n, h_n = (u_0[:, s], h_0[:, s]) if lone == "own" else (u_0[:, -1], h_0[:, -1])
        a = {"alone": u_n, "with": u_t, "h": h_n}[row]
        du = {"delta": u_t - u_n, "u_t": u_t, "h": h_t - h_n}[column]
        c = du @ W if column_product == "W" else du @ W.T  # (B, M); du @ W: shapes mismatch
        if norm == "batch":  # one ‖·‖² for the whole batch
            r = a / numpy.sum(a * a) ** (power / 2)
        else:
            r = a / numpy.linalg.norm(a, axis=-1, keepdims=True) ** power
        delta_W = c[:, :, None] * r[:, None, :]
        if transpose:
            delta_W = numpy.swapaxes(delta_W, -1, -2)
        delta_b = {"delta": h_t - h_n, "zero": numpy.zeros_like(h_t), "h_t": h_t,
                   "minus": h_n - h_t, "u": u_t - u_n}[bias]
        return delta_W, delta_b

    return position_patch


def _raise(error):
    raise error


def thought_delta_with(kind="pinv"):
    """Δ* = U A⁺, or one typical mistake."""

    def thought_delta(W, u_C, u_0):
        U = ((u_C - u_0) @ W.T).mT  # (B, M, K)
        A = u_0.mT  # (B, D, K)
        per_query = U[:, :, :, None] * (u_0 / numpy.sum(u_0**2, -1, keepdims=True))[:, None]
        return {
            "pinv": lambda: U @ numpy.linalg.pinv(A),
            "sum": lambda: per_query.sum(-2),
            "mean": lambda: per_query.mean(-2),
            "transpose_A": lambda: U @ A.mT,
            "u_C": lambda: (u_C @ W.T).mT @ numpy.linalg.pinv(A),
            "A_with": lambda: U @ numpy.linalg.pinv(u_C.mT),
            "minus": lambda: -(U @ numpy.linalg.pinv(A)),
            "swapped": lambda: (U @ numpy.linalg.pinv(A)).mT,
            "normal_equations": lambda: U @ numpy.linalg.inv(A.mT @ A) @ A.mT,
            "pinv_of_u_0": lambda: U @ numpy.linalg.pinv(u_0),  # (B, D, K): K ≠ D, mismatch
            "no_W": lambda: (u_C - u_0).mT @ numpy.linalg.pinv(A),  # (B, D, D), not (B, M, D)
            # A⁺ = Aᵀ(AAᵀ)⁻¹ needs K ≥ D: AAᵀ is singular for K = 3 < D = 4, where
            # numpy.linalg.inv raises LinAlgError when its LU meets an exact zero pivot
            # (it does for one of the case's prompts here; the raise keeps the test
            # independent of the platform's rounding)
            "right_inverse": lambda: _raise(numpy.linalg.LinAlgError("Singular matrix")),
        }[kind]()

    return thought_delta


def test_the_right_position_patch_passes(capsys):
    check_position_patch(position_patch_with())
    out = capsys.readouterr().out
    assert "✓ ΔW_t (block 1) is right" in out and "✓ Δb′_t (block 2) is right" in out
    assert "✓ forward(tokens[:, t:t+1], patches)" in out


def test_the_position_case_is_not_degenerate():
    """The mistakes are told apart: t is neither the last nor the first position, and the
    variant's patch at t differs from position t's own."""
    case = position_case()
    T = case.tokens.shape[1]
    assert 0 < case.t < T - 1 and case.config.causal and case.config.n_blocks == 2
    s = case.blocks[0]
    assert relative_residual(s.u_0[:, case.t], s.u_0[:, -1]) > 1e-2
    assert relative_residual(s.h_C[:, case.t], s.h_0[:, case.t]) > 1e-2


@pytest.mark.parametrize(
    ("mistake", "hint"),
    [
        (dict(row="with"), "run ALONE"),
        (dict(power=0), "division by ‖u_∅,t‖² is missing"),
        (dict(power=1), "is not squared"),
        (dict(column="u_t"), "CHANGE of the MLP input"),
        (dict(position="last"), "LAST position's patch"),
        (dict(lone="last"), "Innocenti & Achour's variant"),
        (dict(transpose=True), "swapped"),
        (dict(bias="zero"), "Δb′_t is zero"),
        (dict(bias="h_t"), "change of the residual stream"),
        (dict(bias="minus"), "wrong sign"),
        (dict(position="before"), "position t − 1's patch: t is a 0-based index"),
        (dict(position="after"), "position t \\+ 1's patch: position t is u_C\\[:, t\\]"),
        (dict(position="every"),
         "ΔW_t \\(block 1\\) has shape \\(4, 6, 8, 4\\): one patch per position"),
        (dict(bias="u"), "Δb′_t is u_t − u_∅,t, the change of the MLP input"),
        (dict(column_product="W"), "ValueError .*the column W δu_t of every prompt is `du @ W.T`"),
        (dict(norm="batch"), "summed over the whole batch: each prompt divides by its own"),
        (dict(index="prompt"), r"u_C\[t\] indexes the first axis, the prompts"),
        (dict(row="h"), "the row is built from h_∅,t, the residual stream"),
        (dict(column="h"), r"the column is W \(h_t − h_∅,t\)"),
    ],
)
def test_each_typical_position_mistake_gets_its_hint(mistake, hint):
    with pytest.raises(ExerciseError, match=hint):
        check_position_patch(position_patch_with(**mistake))


def test_the_right_thought_patch_passes(capsys):
    check_thought_delta(thought_delta_with())
    out = capsys.readouterr().out
    assert "✓ Δ* (K = 3) is right" in out and "✓ Δ* (K = 7) is right" in out
    assert "✓ K = 3 ≤ D" in out


def test_the_thought_case_has_generic_queries():
    """A of full rank for both K (so Δ* = U A⁺ is unique and the K = 3 fit is exact), and
    the sum of the per-query patches is not the fit."""
    case = thought_case()
    assert case.config.d_token == 4 and case.queries.shape[1] == 7 and not case.config.mlp_skip
    for K in (3, 7):
        _, u_0, _ = _states(case, K)
        s = numpy.linalg.svd(u_0, compute_uv=False)  # (B, min(K, D))
        assert numpy.min(s[:, -1] / s[:, 0]) > 1e-2, K
    with pytest.raises(ExerciseError, match="SUM"):
        check_thought_delta(thought_delta_with("sum"))


@pytest.mark.parametrize(
    ("mistake", "hint"),
    [
        ("sum", "SUM of the K per-query patches"),
        ("mean", "MEAN of the K per-query patches"),
        ("transpose_A", "you used Aᵀ"),
        ("u_C", "what the patch must ADD"),
        ("A_with", "a_k = u_∅\\(x_k\\)"),
        ("minus", "wrong sign"),
        ("swapped", "swapped"),
        ("normal_equations", "right for K = 3 ≤ D: for K = 7 > D = 4 the K × K matrix AᵀA is"
                             " singular"),
        ("pinv_of_u_0", "ValueError .*last two\\s+axes swapped, \\(B, D, K\\)"),
        ("no_W", "U is missing W: u_k = W"),
        ("right_inverse",
         "LinAlgError .*for K = 3, D = 4: A Aᵀ \\(D × D\\) is singular when K < D"),
    ],
)
def test_each_typical_thought_mistake_gets_its_hint(mistake, hint):
    with pytest.raises(ExerciseError, match=hint):
        check_thought_delta(thought_delta_with(mistake))


def test_placeholders_and_bad_returns():
    def placeholder(*args):
        raise NotImplementedError("your turn")

    with pytest.raises(ExerciseError, match="not written yet"):
        check_position_patch(placeholder)
    with pytest.raises(ExerciseError, match="not written yet"):
        check_thought_delta(placeholder)
    with pytest.raises(ExerciseError, match="two arrays"):
        check_position_patch(lambda W, *rest: W)
    right = position_patch_with()
    with pytest.raises(ExerciseError, match="Δb′_t \\(block 1\\) has shape"):
        check_position_patch(lambda *args: (right(*args)[0], right(*args)[1][0]))
    with pytest.raises(ExerciseError, match="has shape"):
        check_thought_delta(lambda W, u_C, u_0: W)


def test_an_error_in_the_readers_function_is_an_exercise_error_that_keeps_its_cause():
    """call_answer turns any exception raised inside the reader's function into an
    ExerciseError quoting it, with the check's hint where it gives one; the original stays
    chained (its traceback points at the reader's line)."""
    from minimal_icl.exercises import call_answer

    def broken():
        raise ValueError("shapes (2,3) and (2,3) not aligned")

    with pytest.raises(ExerciseError, match=r"broken raised ValueError \(shapes .* not aligned\):"
                       r" the traceback above shows the line") as info:
        call_answer(broken)
    assert isinstance(info.value.__cause__, ValueError)
    with pytest.raises(ExerciseError, match="not aligned.*: transpose it"):
        call_answer(broken, on_value_error="transpose it")
    with pytest.raises(ExerciseError, match=r"raised ZeroDivisionError \(division by zero\)"):
        call_answer(lambda x: x / 0, 1)


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (lambda W, u_C, u_0: 1 / 0, r"thought_delta raised ZeroDivisionError"),
        (lambda W, u_C, u_0: u_C[9, 9, 9], r"thought_delta raised IndexError"),
        (lambda W, u_C, u_0: {}["a"], r"thought_delta raised KeyError"),
        (lambda W, u_C: W, (r"thought_delta cannot be called as the check calls it, with 3"
                            r" arguments \(too many positional arguments\): keep the parameters")),
    ],
)
def test_a_reader_function_that_raises_or_takes_other_arguments_is_named(answer, message):
    """A function that raises (ZeroDivisionError, IndexError, KeyError were raw Python
    errors) or takes other parameters than the cell's gets an ExerciseError."""
    with pytest.raises(ExerciseError, match=message):
        check_thought_delta(answer)


def test_a_prompt_index_for_the_bias_is_named():
    """ΔW_t right, Δb′_t from h_C[t] (prompt t, (T, D)): named, not a bare shape message."""
    right = position_patch_with()

    def wrong(W, u_C, h_C, u_0, h_0, t):
        return right(W, u_C, h_C, u_0, h_0, t)[0], h_C[t] - h_0[t]

    with pytest.raises(ExerciseError, match=r"h_C\[t\] indexes the first axis, the prompts"):
        check_position_patch(wrong)
