"""The package version (a module of its own, so any module can read it without
importing the package root, which sits above every other module)."""

__version__ = "0.2.0"
