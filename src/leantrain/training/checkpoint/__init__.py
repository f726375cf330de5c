"""Training checkpoints that survive any interruption: safetensors + JSON, written atomically.

A checkpoint in a run folder is a pair of files:

* ``checkpoint-<step>.safetensors``: every tensor: the model's state dict (``model/…``), the
  optimizer's state (``optim/<slot>/<key>``), method tensors (DCP utilities and selections,
  Learn&Drop score snapshots), the epoch's running loss and the torch RNG states (uint8).
* ``checkpoint.json``: everything else: the architecture (`leantrain.models.files.architecture`: dropped
  units and kept channel indices), where training stands (step, epoch, batch), the optimizer's
  hyperparameters and which model parameter each optimizer slot holds (by name), the methods'
  plain values, cost and time totals, the history and events so far, Python/NumPy RNG states,
  and the tensor file's name, size and sha256.

The JSON is the commit record and is written last: a new tensor file gets a new name, then
``checkpoint-prev.json`` is pointed at the last good checkpoint, then ``checkpoint.json`` at the
new one, each with `leantrain.atomic.write_atomic` (temporary file, fsync, rename, fsync). Whenever the process dies, at least
one of the two JSON files names a complete, verified checkpoint; tensor files that neither names
are removed after each save. Loading checks size and sha256 and falls back to the previous
checkpoint with a warning; the JSON's fields are checked one by one (an edited record fails with
a sentence naming the field). Nothing is ever unpickled.
"""

from ..trainstate import TrainState
from .format import (
    FORMAT, LATEST, PREVIOUS, CheckpointError, CheckpointFallbackWarning, CheckpointWriteError,
)
from .restore import Checkpoint, has_checkpoint, load_checkpoint, read_checkpoint, remove_checkpoints
from .writer import Checkpointer, snapshot

__all__ = [
    "FORMAT",
    "LATEST",
    "PREVIOUS",
    "Checkpoint",
    "CheckpointError",
    "CheckpointFallbackWarning",
    "CheckpointWriteError",
    "Checkpointer",
    "TrainState",
    "has_checkpoint",
    "load_checkpoint",
    "read_checkpoint",
    "remove_checkpoints",
    "snapshot",
]
