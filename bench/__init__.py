"""bitbench: a benchmarking harness for 1-bit LLMs."""

__version__ = "0.1.0"
