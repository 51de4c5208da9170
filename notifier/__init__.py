"""notifier: watch things, email a diff when they change."""

# The release, read by pyproject.toml (setuptools' dynamic version) and by the code that
# needs it at run time, without importlib.metadata (1.5 MiB of imports, at every start).
__version__ = "0.1.0"
