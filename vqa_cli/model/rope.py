"""RoPE length generalisation: pick the smallest linear factor that fits the request.

LLaVA-NeXT-Video fits more frames than its 4096 trained positions by scaling the rotary
embedding linearly (positions divided by the factor). Factors are whole numbers, as in the
reference (``factor = ceil(tokens / context)``), counting the real prompt and the tokens to be
generated instead of a fixed allowance. Nothing is ever truncated: a request that needs more
than ``MAX_FACTOR`` fails with a message that says how many frames would fit.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from vqa_cli.settings import ROPE_TYPES

if TYPE_CHECKING:
    from transformers import PretrainedConfig

MAX_FACTOR = 4.0


def required_factor(total_tokens: int, trained_context: int) -> float:
    """The smallest whole factor f with ``trained_context * f >= total_tokens`` (1 = no scaling)."""
    if total_tokens <= trained_context:
        return 1.0
    return float(math.ceil(total_tokens / trained_context))


def scaled_rope_parameters(existing: dict | None, factor: float, rope_type: str) -> dict:
    """The text config's ``rope_parameters`` with scaling applied.

    The existing dict is copied and updated: transformers needs ``rope_theta`` to stay in it.
    """
    params = dict(existing or {})
    if factor == 1.0:
        return params
    if rope_type not in ROPE_TYPES:
        raise ValueError(f"rope type must be one of {ROPE_TYPES}, not {rope_type!r}")
    params.update({"rope_type": rope_type, "factor": float(factor)})
    return params


def apply_to_config(text_config: PretrainedConfig, base: dict | None, factor: float, rope_type: str) -> None:
    """Set the scaling on a text config in place, from the checkpoint's own ``base`` parameters,
    before the model is built from it (so a second load never inherits an earlier factor)."""
    text_config.rope_parameters = scaled_rope_parameters(base, factor, rope_type)
