"""Training: the multi-task loss (``losses``), the loop with validation, resume and checkpoints
(``engine``), torchrun support (``distributed``: rank shares of PK batches, gathers, global batch
norm) and the checks of a config and its data before training starts (``checks``).

May import: the bottom layer (``errors``, ``schema``, ``config``, ``utils``), ``data``,
``models``, ``metrics`` and ``inference``; never ``evaluation``, ``search`` or ``cli``.
"""
