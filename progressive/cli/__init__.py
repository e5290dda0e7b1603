"""The `progressive` command line: it parses and calls."""

from progressive.cli.main import main

__all__ = ["main"]
