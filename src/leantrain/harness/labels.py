"""Point labels that do not cover one another (`place_labels`).

The benchmark plots name every method beside its marker, and a suite's methods cluster: the
`paper` suite has ten ResNet-32 runs within 0.5–0.9× of dense's time and 85.8–86.9% top-1, where
one fixed offset stacked their names into an unreadable block. Each label here takes the first of
a ring of places around its marker that covers no marker and no label placed before it, inside
the axes; a label pushed away from its marker gets a thin leader line.

A greedy pass rather than adjustText: that library needs SciPy, a large dependency for the
names on one kind of plot.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from matplotlib.text import Annotation, Text
from matplotlib.transforms import Bbox

__all__ = ["PointLabel", "place_labels", "text_box"]

# Half the side of the square kept clear around each marker, in points: the markers are drawn at
# matplotlib's default size (6 pt across), plus a point of air.
_MARKER_HALF = 4.0
# Distances from the marker tried, in points: the first is the old fixed offset; each further
# ring is about one line of 7-pt text farther out.
_RADII = (4.0, 11.0, 18.0, 26.0, 34.0, 44.0)
# Farther than the first ring, a label gets a leader line back to its marker.
_LEADER_FROM = _RADII[0]


@dataclass(frozen=True)
class PointLabel:
    """The name `text` of the point drawn at data coordinates (`x`, `y`)."""

    x: float
    y: float
    text: str
    color: Any = "black"


def _places() -> Iterator[tuple[float, float, str, str]]:
    """(dx, dy, horizontal, vertical alignment) around a marker, nearest first: right of it,
    then left, then above and below it."""
    for r in _RADII:
        yield r, r, "left", "bottom"
        yield r, -r, "left", "top"
        yield -r, r, "right", "bottom"
        yield -r, -r, "right", "top"
        yield 0.0, r + _MARKER_HALF, "center", "bottom"
        yield 0.0, -r - _MARKER_HALF, "center", "top"


def _overlap(a: Bbox, b: Bbox) -> float:
    """The area `a` and `b` share (0 where they do not meet)."""
    shared = Bbox.intersection(a, b)
    return 0.0 if shared is None else shared.width * shared.height


def _outside(box: Bbox, frame: Bbox) -> float:
    """The area of `box` that lies outside `frame`."""
    return box.width * box.height - _overlap(box, frame)


def text_box(ann: Annotation, renderer: Any) -> Bbox:
    """Where `ann`'s text is drawn, in display coordinates: its own extent spans its leader line
    too, which may cross a neighbour's label without covering its text."""
    ann.update_positions(renderer)  # places the text from its offset, as a draw would
    return Text.get_window_extent(ann, renderer)


def _annotate(ax: Any, lab: PointLabel, place: tuple[float, float, str, str], fontsize: float,
              arrowprops: dict[str, Any] | None = None) -> Annotation:
    dx, dy, ha, va = place
    return ax.annotate(lab.text, (lab.x, lab.y), textcoords="offset points", xytext=(dx, dy),
                       ha=ha, va=va, fontsize=fontsize, color=lab.color, arrowprops=arrowprops)


def place_labels(ax: Any, labels: Sequence[PointLabel], fontsize: float = 7) -> list[Annotation]:
    """Annotate `ax` with `labels` (in order) so that no label covers a marker or an earlier
    label where the axes leave room; where none does, the place covering the least.

    Call it after everything else is drawn and laid out (`tight_layout`): the places are found in
    display coordinates, which change when the axes' limits or position do.
    """
    fig = ax.figure
    fig.canvas.draw()  # fixes the autoscaled limits and the layout the boxes are measured in
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    half = _MARKER_HALF * fig.dpi / 72
    gap = fig.dpi / 72
    markers: list[Bbox] = []
    for lab in labels:
        px, py = ax.transData.transform((lab.x, lab.y))
        if math.isfinite(px) and math.isfinite(py):
            markers.append(Bbox.from_extents(px - half, py - half, px + half, py + half))
    taken: list[Bbox] = []  # the labels placed so far
    out = []
    for lab in labels:
        best: tuple[float, tuple[float, float, str, str]] | None = None
        for place in _places():
            ann = _annotate(ax, lab, place, fontsize)
            box = text_box(ann, renderer)
            ann.remove()
            # a point of air between labels, so none abuts another
            cost = (sum(_overlap(box, m) for m in markers) + 4 * _outside(box, frame)
                    + sum(_overlap(box.padded(gap), t) for t in taken))
            if best is None or cost < best[0]:
                best = (cost, place)
            if cost == 0:
                break
        assert best is not None  # _places() is never empty
        dx, dy, _, _ = best[1]
        leader = (dict(arrowstyle="-", color="0.6", linewidth=0.5, shrinkA=0, shrinkB=3)
                  if max(abs(dx), abs(dy)) > _LEADER_FROM + _MARKER_HALF else None)
        ann = _annotate(ax, lab, best[1], fontsize, arrowprops=leader)
        taken.append(text_box(ann, renderer))
        out.append(ann)
    return out
