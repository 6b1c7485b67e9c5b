"""auditor: a pytest-style audit harness for third-party image classifiers."""

__version__ = "0.1.0"
