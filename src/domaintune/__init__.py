"""domaintune: turn a general chat model into a domain specialist with your own data.

The Python API lives in `domaintune.api` (one function per CLI command)."""

__version__ = "0.1.0"
