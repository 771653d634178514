"""Runnable examples (``python -m examples.<name> --help``); not installed with the package."""
