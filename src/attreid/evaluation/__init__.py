"""Evaluation of trained checkpoints: the standard protocol run (``evaluate``), plots
(``plots``), and reporting across runs: the study's published numbers (``study``), tables
(``report``) and run comparison (``compare``).

May import: the bottom layer, ``data``, ``models``, ``metrics`` and ``inference``; never
``training``, ``search`` or ``cli``.
"""
