"""Footage: camera video in, tracked people out.

The stages pass one value, :class:`~attreid.footage.detections.Detections` (boxes xyxy in frame
pixels, scores, track ids), for one :class:`~attreid.footage.sources.Frame` (camera, frame index,
wall-clock time, the BGR image):

* ``sources``: video files and frame folders, one camera each, with a start time and a stride;
  a manifest (CSV or YAML) lists several;
* ``detect``: detectors behind one interface (``detect(frame) -> Detections``): OpenCV's HOG
  people detector, precomputed MOTChallenge ``det.txt``;
* ``track``: a tracker within one camera (``update(detections, frame) -> Detections`` with ids);
* ``mot``: MOTChallenge text in and out, and the standard scores (py-motmetrics).

Needs the ``footage`` extra (opencv-python-headless 4.x, motmetrics).

May import: every layer below it (the bottom layer, ``data``, ``models``, ``metrics``,
``inference``, ``search``); never ``training``, ``evaluation`` or ``cli``.
"""
