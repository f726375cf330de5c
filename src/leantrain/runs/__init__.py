"""A run from its configuration to its folder: `RunConfig`, the command line's flags and the model
families' recipes, the runner that writes config, metrics, events, model and summary, exports,
and the record of the machine a run had (environment, whether it had the cores to itself).

Imports the layers below it (`leantrain.training` and everything under it) and nothing above
(`leantrain.harness`, the CLI).
"""
