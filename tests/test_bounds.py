"""Golden upper bounds of Learn&Drop's forward-FLOPs reduction (spec: all eligible units dropped
from step 0, conv + linear MACs). A measured R_cum above these means a bug in eligibility or
counting."""

from __future__ import annotations

import pytest

from leantrain import count_macs, create_model, drop_units, units_of


@pytest.mark.parametrize("name, size, bound", [
    ("vgg11", 32, 61.77), ("vgg16", 32, 81.35), ("resnet50", 224, 64.11),
])
def test_eligible_share_matches_spec(name, size, bound) -> None:
    model = create_model(name, input_size=size, num_classes=10)
    shape = (3, size, size)
    full = count_macs(model, shape, include_bias=False)
    drop_units(model, [u.name for u in units_of(model)])
    assert 100 * (1 - count_macs(model, shape, include_bias=False) / full) == pytest.approx(bound, abs=0.005)
