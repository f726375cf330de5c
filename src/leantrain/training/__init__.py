"""Training with the methods plugged in: `attach` (the optimizer's step hooks a user's own loop
needs), `fit` (leantrain's loop, on the same hooks), checkpoints that resume exactly, the
device-synchronised stopwatch, the activation meter and the processes of a DDP job.

Imports the layers below it (`leantrain.methods`, `leantrain.models`, `leantrain.structure`, the
ground floor) and nothing above (`leantrain.runs`, `leantrain.harness`, the CLI).
"""
