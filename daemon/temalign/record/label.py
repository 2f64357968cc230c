"""What a verified correction teaches: the delta that was right where its wobble was taken.

A correction moved the aperture by `applied` (the read-back positions' difference, not the command)
and the verification's wobble then estimated what was still left, `residual`. The delta that would
have re-centred the aperture from where the first wobble was taken is their sum. Both the stack
store (issue 14's labels) and the shadow comparison (which model agreed better with what happened)
use this one definition.

It is only as good as the verification's estimate: a bias both estimators share at alignment stays
in the label (docs/learning.md says when a person's reference labels instead)."""

from __future__ import annotations

Vector = tuple[float, float]


def verified_label(applied: Vector, residual: Vector) -> Vector:
    """The delta (motor units, x then y) right at the first wobble's position."""
    return (float(applied[0]) + float(residual[0]), float(applied[1]) + float(residual[1]))
