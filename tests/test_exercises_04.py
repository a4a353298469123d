"""Tutorial 04's check: the skip block's patch passes when right and names each typical
mistake."""

from __future__ import annotations

import numpy
import pytest

from minimal_icl.exercises import ExerciseError
from minimal_icl.exercises.tutorial_04 import check_skip_patch, skip_patch_case
from minimal_icl.tolerances import IDENTITY_RTOL, relative_residual


def patch_with(row="x+A", power=2, column="delta", bias="delta", transpose=False,
               batch_norm=False, axis=-1, patched=False):
    """A skip-block patch with one switch per typical mistake (the defaults are right)."""

    def skip_patch(W, x, A_with, A_without):
        if row == "swapped":  # column W (x + A(x)), row ΔA/‖ΔA‖²
            d = A_with - A_without
            return ((x + A_without) @ W.T)[:, :, None] * (d / numpy.sum(d * d, -1, keepdims=True))[
                :, None, :], d
        rows = {"x+A": x + A_without, "A": A_without, "with": x + A_with, "x": x}
        columns = {"delta": A_with - A_without, "h_C": x + A_with, "A_C": A_with,
                   "h_0": x + A_without, "x+delta": x + A_with - A_without}
        a = rows[row]
        c = columns[column] @ W.T  # (B, M)
        r = a / numpy.linalg.norm(a, axis=axis, keepdims=True) ** power  # (B, D)
        if batch_norm:  # one ‖a‖² for every prompt at once
            r = a / numpy.linalg.norm(a) ** 2
        delta_W = c[:, :, None] * r[:, None, :]  # (B, M, D)
        if transpose:
            delta_W = numpy.swapaxes(delta_W, -1, -2)
        if patched:  # W + ΔW
            delta_W = W + delta_W
        biases = {"delta": A_with - A_without, "zero": numpy.zeros_like(x),
                  "h_C": x + A_with, "A_C": A_with, "minus": A_without - A_with,
                  "h_0": x + A_without, "x": x, "x+delta": x + A_with - A_without,
                  "column": (A_with - A_without) @ W.T}
        return delta_W, biases[bias]

    return skip_patch


def test_the_right_patch_passes(capsys):
    check_skip_patch(patch_with())
    out = capsys.readouterr().out
    assert "✓ ΔW is right" in out and "✓ Δb′ is right" in out and "✓ T_(W+ΔW" in out


def test_the_case_is_the_skip_block_whose_row_is_x_plus_A():
    """The check's inputs: the package's row is (x + A(x))/‖x + A(x)‖², which differs
    from the paper's A(x)/‖A(x)‖², and Δb′ = ΔA."""
    case = skip_patch_case()
    a = case.x + case.A_without
    row = a / numpy.sum(a**2, -1, keepdims=True)
    assert relative_residual(case.update.row, row) <= IDENTITY_RTOL
    paper = case.A_without / numpy.sum(case.A_without**2, -1, keepdims=True)
    assert relative_residual(case.update.row, paper) > 1e-2
    assert relative_residual(case.update.delta_b, case.A_with - case.A_without) <= IDENTITY_RTOL


@pytest.mark.parametrize(
    ("mistake", "hint"),
    [
        (dict(row="A"), "the paper's skip form"),
        (dict(power=0), "division by ‖a‖² is missing"),
        (dict(power=1), "is not squared"),
        (dict(batch_norm=True), "summed over every prompt"),
        (dict(row="with"), "WITHOUT the context"),
        (dict(column="h_C"), "CHANGE of the MLP input"),
        (dict(column="A_C"), "the column is W A\\(C, x\\)"),
        (dict(transpose=True), "swapped"),
        (dict(bias="zero"), "Δb′ is zero"),
        (dict(bias="h_C"), "change of the residual stream"),
        (dict(bias="A_C"), "Δb′ is A\\(C, x\\)"),
        (dict(bias="minus"), "wrong sign"),
        (dict(row="x"), "built from x alone"),
        (dict(row="swapped"), "the column and the row are swapped"),
        (dict(column="h_0"), "the column is W \\(x \\+ A\\(x\\)\\)"),
        (dict(axis=0), "summed over the prompts \\(axis=0\\)"),
        (dict(patched=True), "the patched weight W \\+ ΔW"),
        (dict(bias="h_0"), "Δb′ is h_∅"),
        (dict(bias="x"), "Δb′ is the query token x"),
        (dict(column="x+delta"), "the column is W \\(x \\+ A\\(C, x\\) − A\\(x\\)\\)"),
        (dict(bias="x+delta"), "Δb′ is x \\+ ΔA"),
        (dict(bias="column"), "Δb′ is the column W ΔA, of width M = 16"),
    ],
)
def test_each_typical_mistake_gets_its_hint(mistake, hint):
    with pytest.raises(ExerciseError, match=hint):
        check_skip_patch(patch_with(**mistake))


def test_placeholder_and_bad_returns():
    def placeholder(W, x, A_with, A_without):
        raise NotImplementedError("your turn")

    with pytest.raises(ExerciseError, match="not written yet"):
        check_skip_patch(placeholder)
    with pytest.raises(ExerciseError, match="two arrays"):
        check_skip_patch(lambda W, x, A_with, A_without: W)
    right = patch_with()
    with pytest.raises(ExerciseError, match="Δb′ has shape"):
        check_skip_patch(lambda *args: (right(*args)[0], right(*args)[1][0]))
    with pytest.raises(ExerciseError, match="returned \\(delta_b, delta_W\\)"):
        check_skip_patch(lambda *args: right(*args)[::-1])


def test_a_shape_error_inside_the_answer_gets_a_hint():
    """A ValueError raised by NumPy inside the reader's function (W not transposed, a
    squared norm without keepdims) becomes an ExerciseError that says what to write."""

    def W_not_transposed(W, x, A_with, A_without):
        a = x + A_without
        column = (A_with - A_without) @ W  # (B, D) @ (M, D): mismatched
        return column[:, :, None] * a[:, None, :], A_with - A_without

    def no_keepdims(W, x, A_with, A_without):
        a = x + A_without
        row = a / numpy.sum(a**2, axis=-1)  # (B, D) / (B,): does not broadcast
        return ((A_with - A_without) @ W.T)[:, :, None] * row[:, None, :], A_with - A_without

    with pytest.raises(ExerciseError, match="ValueError .*`\\(A_with - A_without\\) @ W.T`"):
        check_skip_patch(W_not_transposed)
    with pytest.raises(ExerciseError, match="ValueError .*keepdims=True"):
        check_skip_patch(no_keepdims)
