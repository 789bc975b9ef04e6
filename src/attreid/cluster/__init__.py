"""Work spread over a Ray cluster (issue 32): embedding a gallery's crops on Ray workers
(``ray_embed``, for ``attreid index build --ray``) and tracking footage sources on them
(``ray_ingest``, for ``attreid ingest --ray``). Ray is optional (the ``ray`` extra) and
imported only when a cluster is asked for; without one everything runs in this process.

Layer 10 (docs/ARCHITECTURE.md): imports ``footage`` and ``search`` (the ingest and the build
it feeds), ``inference`` (the predictor each worker loads) and lower layers; only ``cli``
imports it.
"""

from attreid.cluster.ray_embed import ClusterError, ray_embedder
from attreid.cluster.ray_ingest import ray_tracking

__all__ = ["ClusterError", "ray_embedder", "ray_tracking"]
