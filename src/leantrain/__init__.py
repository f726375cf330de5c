"""leantrain: faster CNN training by pruning while training."""

__version__ = "0.1.0"
