"""Training: the multi-task loss (``losses``), the pieces of a run built from a Config
(``builders``: data bundle, criterion, optimizer, schedule, PK loaders, cache), one step and
epoch with the NaN guard (``step``), validation during training (``validation``), the run itself
with setup, resume and checkpoints (``engine``), torchrun support (``distributed``: rank shares
of PK batches, gathers, global batch norm) and the checks of a config and its data before
training starts (``checks``).

May import: the bottom layer (``errors``, ``schema``, ``config``, ``utils``), ``data``,
``models``, ``metrics`` and ``inference``; never ``evaluation``, ``search`` or ``cli``.
"""
