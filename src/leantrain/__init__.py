"""leantrain: faster CNN training by pruning while training.

Two methods, both computing less rather than masking: Learn&Drop (drop whole layers whose
parameters have settled, arXiv 2604.23403) and Dynamic Channel Propagation (train with only the
highest-utility channels and export a compact model, arXiv 2007.01486).
"""

from .compiled import compile_model
from .cost import CostMeter, StepCost, count_macs, count_params, measure_step_flops
from .methods import METHODS, Method, Progress
from .methods.base import MethodWarning
from .methods.dcp import DCP
from .methods.freezeout import FreezeOut
from .methods.learndrop import LearnDrop
from .methods.stochastic_depth import StochasticDepth
from .methods.tp_prune import TPPrune
from .models.factory import create_model, list_models
from .models.files import ModelFileError, load_model, save_model
from .structure import (
    ChannelSet, ExampleInputError, Excluded, Structure, StructureError, Unit, channel_sets_of,
    prepare, structure_of, units_of,
)
from .structure.surgery import Change, drop_units, freeze_units, prune_channels, remap_optimizer
from .training.attach import AttachError, Attached, AttachWarning, attach
from .training.checkpoint import CheckpointError, Checkpointer, load_checkpoint
from .training.fit import Result, TrainingDiverged, evaluate, fit, lr_at

__version__ = "0.1.0"

__all__ = [
    "Attached", "attach", "Checkpointer", "DCP", "FreezeOut", "LearnDrop", "StochasticDepth", "TPPrune", "METHODS",
    "Change", "ChannelSet", "compile_model", "CostMeter", "Excluded", "Method", "Progress",
    "Structure",
    "StructureError", "prepare", "structure_of",
    # what a caller catches: bad input (errors) and settings that cannot do what they ask (warnings)
    "AttachError", "AttachWarning", "CheckpointError", "ExampleInputError", "MethodWarning",
    "ModelFileError", "TrainingDiverged",
    "Result", "StepCost", "Unit", "channel_sets_of", "count_macs", "count_params",
    "create_model", "drop_units", "evaluate", "fit", "freeze_units", "list_models",
    "load_checkpoint", "load_model",
    "lr_at", "measure_step_flops", "prune_channels", "remap_optimizer", "save_model", "units_of",
]
