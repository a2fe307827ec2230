"""The installed slidemap's version, read from the package metadata (a leaf: imports nothing of slidemap)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("slidemap")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"
