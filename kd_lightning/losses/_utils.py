"""Small helpers shared by the loss functions."""

from __future__ import annotations

import torch


def full_precision(x: torch.Tensor) -> torch.Tensor:
    """At least float32 (float64 stays float64): exact losses in gradcheck and, inside
    :func:`autocast_off`, under autocast."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def autocast_off(x: torch.Tensor) -> torch.autocast:
    """A region without autocast on ``x``'s device, for loss math on :func:`full_precision` tensors.

    The one way the losses leave autocast: under bf16/fp16 autocast a matrix product runs in half
    precision whatever its inputs' dtype, so casting up alone does not keep a Gram matrix or a
    contrast score in float32.
    """
    return torch.autocast(device_type=x.device.type, enabled=False)


# Added to the standard deviation, as LS-KD does, so a constant logit row does not divide by zero.
_STANDARDIZE_EPS = 1e-7


def standardize_logits(logits: torch.Tensor) -> torch.Tensor:
    """Each sample's logits z-scored over the classes (logit standardisation, Sun et al., CVPR 2024).

    The softmax is invariant to a shift but not to a scale, so a student that must match the
    teacher's logits up to a temperature also has to match their range; z-scoring lets it match
    only their ranking and relative gaps. As the authors' code does (and their paper's Eq. 5 does
    not say), the standard deviation is the unbiased one (divisor ``C − 1``) and ``1e-7`` is added
    to it; the losses keep their ``T²`` factor after standardising.
    """
    mean = logits.mean(dim=-1, keepdim=True)
    std = logits.std(dim=-1, keepdim=True)
    return (logits - mean) / (std + _STANDARDIZE_EPS)


def check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}; Hinton et al. use 1-20, 4 is common")


def check_logit_pair(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> None:
    """Logit losses compare distributions over one label set: the shapes must agree."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} differ; teacher and student need the same classes"
        )


def comparable_logits(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, standardize: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Student and teacher logits as every logit loss compares them: checked for one label set, in at least
    float32 and, with ``standardize``, z-scored per sample. Call it inside :func:`autocast_off`."""
    check_logit_pair(student_logits, teacher_logits)
    s, t = full_precision(student_logits), full_precision(teacher_logits)
    return (standardize_logits(s), standardize_logits(t)) if standardize else (s, t)
