"""The base of attreid's named errors (the lowest layer: every module may import it).

A named error means bad input or a run that cannot go on, never a bug: its message says what,
where and what to do. The ``attreid`` command prints it as one paragraph and exits with status 1;
a traceback is printed only for other exceptions (bugs), or for every error with
``ATTREID_DEBUG=1``.
"""

from __future__ import annotations


class AttreidError(Exception):
    """Base class of :class:`~attreid.data.records.DataError`,
    :class:`~attreid.config.ConfigError`, :class:`~attreid.utils.checkpoint.CheckpointError`,
    :class:`~attreid.training.step.NonFiniteLossError` and the other named errors."""
