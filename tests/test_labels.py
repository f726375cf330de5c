"""Plot labels placed clear of one another (`leantrain.harness.labels`)."""

from __future__ import annotations

import itertools

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from leantrain.harness.labels import PointLabel, place_labels, text_box  # noqa: E402

# The `paper` suite's ResNet-32 cluster (time ratio, top-1, name) that one fixed offset stacked.
CLUSTER = [
    (0.54, 86.02, "learndrop-rn-b0.7-keep2"), (0.56, 85.93, "learndrop-b0.7-keep2"),
    (0.60, 86.19, "dense-b0.6"), (0.76, 86.17, "static-p0.5"), (0.82, 86.36, "dcp-layer-p0.5"),
    (0.87, 86.86, "static@dcp-p0.5"), (0.90, 86.32, "dcp-p0.5-x0.3"), (0.93, 86.04, "dcp-p0.5"),
    (0.87, 85.85, "learndrop+dcp-p0.5"), (0.42, 86.03, "resnet14/dense"),
]


def _axes_with_cluster():
    fig, ax = plt.subplots(figsize=(6.0, 4.2))
    xs, ys, _ = zip(*CLUSTER)
    ax.plot(xs, ys, "o")
    ax.set_xlim(0.2, 1.6)
    ax.set_ylim(81.5, 88.7)
    fig.tight_layout()
    return fig, ax


def _text_boxes(annotations, renderer):
    return [text_box(a, renderer) for a in annotations]


def _overlapping_pairs(boxes) -> list[tuple[int, int]]:
    return [(i, j) for (i, a), (j, b) in itertools.combinations(enumerate(boxes), 2)
            if a.overlaps(b)]


def test_labels_of_a_tight_cluster_cover_neither_one_another_nor_a_marker():
    fig, ax = _axes_with_cluster()
    renderer = fig.canvas.get_renderer()
    # the same labels at one fixed offset, as the plots drew them before, do overlap here
    fixed = [ax.annotate(t, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
             for x, y, t in CLUSTER]
    assert _overlapping_pairs([a.get_window_extent(renderer) for a in fixed])
    for a in fixed:
        a.remove()

    placed = place_labels(ax, [PointLabel(x, y, t) for x, y, t in CLUSTER])

    boxes = _text_boxes(placed, renderer)
    assert [a.get_text() for a in placed] == [t for _, _, t in CLUSTER]
    assert _overlapping_pairs(boxes) == []
    frame = ax.get_window_extent(renderer)
    markers = [ax.transData.transform((x, y)) for x, y, _ in CLUSTER]
    for box in boxes:
        assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 <= frame.y1
        assert not any(box.contains(mx, my) for mx, my in markers)
    plt.close(fig)


def _axes_with_one_marker(x: float, y: float):
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot([x], [y], "o")
    ax.set_xlim(0, 3)
    ax.set_ylim(0, 4)
    return fig, ax


def test_a_lone_point_keeps_the_label_beside_it_without_a_leader_line():
    fig, ax = _axes_with_one_marker(1.0, 2.0)
    (ann,) = place_labels(ax, [PointLabel(1.0, 2.0, "dense")])
    assert ann.xyann == pytest.approx((4.0, 4.0))  # right of and above the marker
    assert ann.arrow_patch is None
    plt.close(fig)


def test_labels_pushed_out_of_the_first_ring_get_a_leader_line_to_their_marker():
    fig, ax = _axes_with_one_marker(1.5, 2.0)
    # eight names on one marker: the six places of the nearest ring cannot hold them all
    placed = place_labels(ax, [PointLabel(1.5, 2.0, f"run-{i}") for i in range(8)])
    renderer = fig.canvas.get_renderer()
    assert _overlapping_pairs(_text_boxes(placed, renderer)) == []
    near = [a for a in placed if max(map(abs, a.xyann)) <= 8]
    far = [a for a in placed if max(map(abs, a.xyann)) > 8]
    assert near and far
    assert all(a.arrow_patch is None for a in near)
    assert all(a.arrow_patch is not None for a in far)
    plt.close(fig)
