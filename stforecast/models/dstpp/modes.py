"""The one way DSTPP's forecasting code switches dropout off: :func:`evaluating`."""

from __future__ import annotations

import contextlib

from torch import nn


@contextlib.contextmanager
def evaluating(model: nn.Module):
    """``model`` in eval mode (no dropout) for the block; its previous mode is restored after it, whatever
    happens (forecasts can be asked for in the middle of training)."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
