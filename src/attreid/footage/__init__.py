"""Footage: camera video in, tracked people out.

The stages pass one value, :class:`~attreid.footage.detections.Detections` (boxes xyxy in frame
pixels, scores, track ids), for one :class:`~attreid.footage.sources.Frame` (camera, frame index,
wall-clock time, the BGR image):

* ``sources``: video files and frame folders, one camera each, with a start time and a stride;
  a manifest (CSV or YAML) lists several;
* ``detect`` (with ``detect_hog``, ``detect_motion``, ``detect_onnx``, ``detect_boxes``):
  detectors behind one interface (``detect(frame) -> Detections``, ``reset()``): OpenCV's HOG
  people detector focused by motion, moving blobs, a user's ONNX detector, precomputed
  MOTChallenge ``det.txt``; ``build_detector(name, **options)``;
* ``kalman`` + ``track``: a tracker within one camera (``update(detections, frame) ->
  Detections`` with ids);
* ``tracklets``: tracks into gallery entries (crop quality, splits, the best crops);
* ``pipeline``: one source through the stages; ``gallery``: crops and sightings into an index;
  ``ingest``: several sources, resumable;
* ``mot``: MOTChallenge text in and out, and the standard scores (py-motmetrics); ``scores``:
  cross-camera retrieval of tracklets.

Needs the ``footage`` extra (opencv-python-headless 4.x, motmetrics).

May import: every layer below it (the bottom layer, ``data``, ``models``, ``metrics``,
``inference``, ``search``); never ``training``, ``evaluation`` or ``cli``.
"""
