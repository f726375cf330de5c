"""The benchmark and report harness: suites, `leantrain bench`, `leantrain report`, targets, plots.

It builds on the core (it runs `leantrain.runs.runner.run` and reads configs), never the other way
round: no core module imports this package (``tests/test_layering.py`` checks it).
"""
