"""What can be removed from a model: droppable units and prunable channel sets, as a `Structure`.

The structure is *discovered* from the model's own forward by `leantrain.prepare` (see
`leantrain.structure.discover`, which traces it with torch.fx), for leantrain's models and a user's alike.
A model may instead describe itself by defining ``droppable_units()`` and ``channel_sets()``
(the override for what tracing cannot see). Methods read only the `Structure`, never a model's
internals.

The structure is cached on the model and found again after every structural cut (surgery bumps
the model's structure version), so it always describes the live network.
"""

from .layers import ConvBN, SelectLinear, SliceBatchNorm2d, SliceConv2d, make_sliceable
from .prepare import (
    channel_sets_of, check_example_input, prepare, set_example_input, sliceable_layers,
    stage_blocks_of, structure_of, units_of,
)
from .record import bump_version, example_shape
from .types import (
    ChannelSet, Excluded, ExampleInputError, ExampleInputTypeError, Structure, StructureError,
    Unit, format_structure,
)

__all__ = [
    "prepare", "Unit", "ChannelSet", "Excluded", "Structure", "StructureError",
    "ExampleInputError", "ExampleInputTypeError", "check_example_input", "structure_of",
    "units_of", "channel_sets_of", "stage_blocks_of", "bump_version", "set_example_input",
    "example_shape", "format_structure", "sliceable_layers", "ConvBN", "SelectLinear",
    "SliceBatchNorm2d", "SliceConv2d", "make_sliceable",
]
