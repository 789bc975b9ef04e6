"""Utilities every layer may use: atomic file writes and printable names (``files``),
checkpoints (``checkpoint``), the CPU/oneDNN back end and device choice (``backend``),
optional dependencies (``extras``).

May import: ``attreid.errors`` and ``attreid.zoo`` (shipped models resolved by name), and
torch.
"""
