"""Track footage sources on a Ray cluster: ``attreid ingest --ray ADDRESS``.

Each source (one camera's video or frame folder) is one Ray task of one CPU: it loads the
predictor (the checkpoint on the backend the driver chose), makes the source's detector and
runs :func:`~attreid.footage.pipeline.track_source` (decode, detect, embed, track, choose the
best crops). The tracked sources come back through Ray's object store in the order given, and
the driver writes the tracks and adds the crops to the index as a run in one process does
(:func:`attreid.footage.ingest.ingest`), so a killed run is finished by the same command.
The workers read the footage by path: on several machines it must be at the same path on each.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator

from attreid.cluster.ray_embed import ClusterError, ray_session
from attreid.footage.detections import FootageError
from attreid.footage.ingest import TrackMany
from attreid.footage.pipeline import (
    Detector,
    PipelineSettings,
    SourceTracks,
    predictor_embedder,
    track_source,
)
from attreid.footage.sources import SourceSpec


def _track(spec: SourceSpec, make_detector: Callable[[SourceSpec], Detector],
           checkpoint: str | None, backend: str, settings: PipelineSettings,
           batch_size: int) -> SourceTracks | Exception:
    """One source tracked on a worker (a Ray task); a source that cannot be read comes back
    as its error, as in one process."""
    embedder = None
    if checkpoint is not None:
        from attreid.inference.backends import load_predictor

        predictor, _ = load_predictor(checkpoint, backend, device="cpu", batch_size=batch_size)
        embedder = predictor_embedder(predictor)
    try:
        return track_source(spec, make_detector(spec), embedder, settings)
    except (FootageError, OSError) as exc:
        return exc


def ray_tracking(address: str, checkpoint: Path | str | None, backend: str,
                 make_detector: Callable[[SourceSpec], Detector],
                 settings: PipelineSettings, batch_size: int = 32,
                 done: Callable[[SourceSpec], None] | None = None) -> TrackMany:
    """A :data:`~attreid.footage.ingest.TrackMany` that tracks every source at once on Ray
    (``address`` as :func:`~attreid.cluster.ray_embed.ray_session`), one CPU per source, and
    gives them back in order; ``done`` is told as each comes back. The workers embed in
    batches of ``batch_size`` crops, as the driver's predictor does, so the batches agree.
    ``make_detector`` is sent to the workers (cloudpickle), so it must not hold open files or
    sessions.

    Raises (while iterating):
        ClusterError: the cluster cannot be reached, or a worker died.
    """
    def track_many(specs: list[SourceSpec]) -> Iterator[SourceTracks | Exception]:
        if not specs:
            return
        with ray_session(address) as ray:
            task = ray.remote(num_cpus=1)(_track)
            refs = [task.remote(spec, make_detector, None if checkpoint is None
                                else str(checkpoint), backend, settings, batch_size)
                    for spec in specs]
            for spec, ref in zip(specs, refs):
                result = _result(ray, ref, spec)
                if done:
                    done(spec)
                yield result

    return track_many


def _result(ray: Any, ref: Any, spec: SourceSpec) -> SourceTracks | Exception:
    try:
        return ray.get(ref)
    except ray.exceptions.RayError as exc:
        raise ClusterError(f"{spec.path}: a Ray worker failed tracking it: {exc}") from None


__all__ = ["ray_tracking"]
