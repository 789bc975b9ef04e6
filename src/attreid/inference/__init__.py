"""Inference with a trained checkpoint: :class:`predictor.Predictor` (images -> embeddings and
attribute probabilities), batch extraction (``extraction``), the sharded feature store for
galleries beyond memory (``features``), prediction files (``predict``) and ONNX export with its
runtime predictor (``onnx``); from a distance to P(same person) (``calibration``, what it fits
besides: ``fits``, and the answers for one pair or a search hit: ``verdicts``).

May import: the bottom layer (``errors``, ``schema``, ``config``, ``utils``), ``data``,
``models`` and ``metrics``; never ``training``, ``evaluation``, ``search`` or ``cli``.
"""
