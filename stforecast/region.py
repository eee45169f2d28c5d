"""A region: the axis-aligned box a catalog's events lie in, as pyCSEP passes a region object from step to step.

A :class:`Region` is a named 4-tuple, so ``x0, y0, x1, y1 = region`` and code that takes a plain box keep working;
its names and methods say what the numbers are."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Region(NamedTuple):
    """``(x0, y0, x1, y1)``: lower-left and upper-right corners, in the frame named where it is made (model units
    for :attr:`stforecast.ingested.IngestedCatalog.region`, lon/lat for its ``region_lonlat``)."""

    x0: float
    y0: float
    x1: float
    y1: float

    @classmethod
    def of(cls, box) -> "Region":
        """Any 4 numbers ``(x0, y0, x1, y1)`` (a list from a settings file, a tuple) as a Region of floats."""
        x0, y0, x1, y1 = (float(v) for v in box)
        return cls(x0, y0, x1, y1)

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        return self.y1 - self.y0

    def padded(self, pad: float) -> "Region":
        """Widened by ``pad`` of its width and height on each side."""
        px, py = pad * self.width, pad * self.height
        return Region(self.x0 - px, self.y0 - py, self.x1 + px, self.y1 + py)

    def joined(self, other) -> "Region":
        """The smallest box holding both."""
        other = Region.of(other)
        return Region(min(self.x0, other.x0), min(self.y0, other.y0), max(self.x1, other.x1), max(self.y1, other.y1))

    def contains(self, xy: np.ndarray) -> np.ndarray:
        """``(..., 2)`` points → ``(...,)`` bool: inside or on the edge."""
        xy = np.asarray(xy)  # its own dtype: float32 samples compare as they always have
        return (xy[..., 0] >= self.x0) & (xy[..., 0] <= self.x1) & (xy[..., 1] >= self.y0) & (xy[..., 1] <= self.y1)

    def outline(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The outline as ``n`` points per side, ``(xs, ys)`` each ``(4 n,)``: for projecting a box whose image in
        another CRS is curved."""
        edge = np.linspace(0, 1, n)
        x0, y0, x1, y1 = self
        xs = np.r_[x0 + (x1 - x0) * edge, np.full(n, x1), x1 - (x1 - x0) * edge, np.full(n, x0)]
        ys = np.r_[np.full(n, y0), y0 + (y1 - y0) * edge, np.full(n, y1), y1 - (y1 - y0) * edge]
        return xs, ys
