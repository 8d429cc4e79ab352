"""The package's version: one place, read by the package, config.json and `vaekit --version`."""

__version__ = "0.2.0"
