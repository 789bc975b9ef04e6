"""attreid: joint pedestrian attribute recognition and person re-identification."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("attreid")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0"
