"""Person re-identification ranking metrics: CMC, mAP and mINP of a query x gallery distance
matrix under the Market-1501 and the study's protocol, exactly and exhaustively (every gallery
entry ranked), in memory (:func:`reid_metrics`) or from a gallery read block by block
(:func:`reid_metrics_streamed`). Zheng et al. 2015 (Market-1501); mINP: Ye et al. 2021."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Union

import numpy as np
import torch

from attreid.metrics.distance import DISTANCE_METRICS, pairwise_distance
from attreid.metrics.inputs import ArrayLike, ids_1d, to_tensor

PROTOCOLS: tuple[str, ...] = ("market", "seed")
"""Valid values of ``reid_metrics(protocol=...)``."""

JUNK_ID = -1
"""Gallery identity removed by the ``"market"`` protocol."""

_REPORTED_RANKS: tuple[int, ...] = (1, 5, 10, 20)


@dataclass(frozen=True, eq=False)
class ReidResult:
    """Ranking metrics over the valid queries (those with at least one match).

    Attributes:
        cmc: (L,) float64, read-only; ``cmc[k]`` = fraction of valid queries whose first match
            is at rank <= k + 1 (rank-1 first), L = min(max_rank, G).
        mAP: mean average precision, a fraction in [0, 1].
        mINP: mean inverse negative penalty (Ye et al., TPAMI 2021), a fraction in [0, 1].
        num_valid_queries: queries with at least one match (the others are skipped).
        num_queries: all queries, Q.
    """

    cmc: np.ndarray
    mAP: float
    mINP: float
    num_valid_queries: int
    num_queries: int

    def rank(self, k: int) -> float:
        """CMC at rank ``k`` (1-based): ``cmc[k - 1]``, a fraction."""
        if not 1 <= k <= len(self.cmc):
            raise ValueError(f"k: got {k}, expected 1..{len(self.cmc)} (the CMC length)")
        return float(self.cmc[k - 1])

    def as_dict(self) -> dict[str, float | int]:
        """JSON-ready summary, all metrics as **fractions** in [0, 1] (not percent).

        Keys: ``rank1``, ``rank5``, ``rank10``, ``rank20`` (only those <= the CMC length),
        ``mAP``, ``mINP``, ``num_valid_queries``, ``num_queries``.
        """
        out: dict[str, float | int] = {
            f"rank{k}": self.rank(k) for k in _REPORTED_RANKS if k <= len(self.cmc)
        }
        out.update(mAP=self.mAP, mINP=self.mINP, num_valid_queries=self.num_valid_queries,
                   num_queries=self.num_queries)
        return out


def _check_reid_args(protocol: str, max_rank: int, chunk_size: int) -> None:
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol: got {protocol!r}, expected one of {PROTOCOLS}")
    if max_rank < 1:
        raise ValueError(f"max_rank: got {max_rank}, expected >= 1")
    if chunk_size < 1:
        raise ValueError(f"chunk_size: got {chunk_size}, expected >= 1")


def _cams(query_cams: ArrayLike | None, gallery_cams: ArrayLike | None, q: int, g: int
          ) -> tuple[torch.Tensor, torch.Tensor] | None:
    if (query_cams is None) != (gallery_cams is None):
        raise ValueError("query_cams, gallery_cams: give both or neither")
    if query_cams is None or gallery_cams is None:
        return None
    return (ids_1d(query_cams, "query_cams", q, "distmat rows"),
            ids_1d(gallery_cams, "gallery_cams", g, "distmat columns"))


def _reid_inputs(distmat: ArrayLike, query_ids: ArrayLike, gallery_ids: ArrayLike,
                 query_cams: ArrayLike | None, gallery_cams: ArrayLike | None, exclude_self: bool
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                            tuple[torch.Tensor, torch.Tensor] | None]:
    """Validated tensors: distmat (Q, G), query ids (Q,), gallery ids (G,), cams or None."""
    dist = to_tensor(distmat, "distmat")
    if dist.ndim != 2:
        raise ValueError(f"distmat: expected shape (Q, G), got {tuple(dist.shape)}")
    if not dist.is_floating_point():
        dist = dist.to(torch.float64)  # integer distances: exact up to 2**53
    q, g = dist.shape
    if q == 0 or g == 0:
        raise ValueError(f"distmat: empty, shape {(q, g)}")
    if exclude_self and q != g:
        raise ValueError(f"exclude_self: requires Q == G (the same set), got distmat {q} x {g}")
    qids = ids_1d(query_ids, "query_ids", q, "distmat rows")
    gids = ids_1d(gallery_ids, "gallery_ids", g, "distmat columns")
    return dist, qids, gids, _cams(query_cams, gallery_cams, q, g)


def _gallery_codes(qids: torch.Tensor, gids: torch.Tensor,
                   cams: tuple[torch.Tensor, torch.Tensor] | None, market: bool,
                   self_idx: torch.Tensor | None, offset: int = 0) -> torch.Tensor:
    """(B, G) int8 in gallery order: 0 = removed for this query, 1 = kept, 2 = kept match.

    ``gids`` (and the gallery cameras) may be a block of the gallery starting at ``offset``;
    ``self_idx`` (B,) or (B, C) are then global gallery indices removed from each query's
    ranking where they fall in the block (-1: none).
    """
    same_id = gids[None, :] == qids[:, None]  # (B, G)
    keep = torch.ones_like(same_id)
    if market:
        keep &= (gids != JUNK_ID)[None, :]
        if cams is not None:
            qcams, gcams = cams
            keep &= ~(same_id & (gcams[None, :] == qcams[:, None]))
    if self_idx is not None:
        local = self_idx.reshape(len(qids), -1).to(keep.device) - offset  # (B, C)
        inside = (local >= 0) & (local < len(gids))
        rows = torch.arange(len(qids), device=keep.device)[:, None].expand_as(local)
        keep[rows[inside], local[inside]] = False
    return keep.to(torch.int8) + (same_id & keep).to(torch.int8)


def _match_table(dist: torch.Tensor, codes: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each query's matches in ranking order, padded: distances, gallery indices, counts.

    Returns:
        dist (B, M) and index (B, M) of the matches sorted by (distance, gallery index), pads
        +inf and G; num (B,) matches per query. M = the most matches of any query (>= 1).
    """
    b, g = codes.shape
    rows, cols = (codes == 2).nonzero(as_tuple=True)  # row-major: ascending index per row
    return _matches_to_table(rows, cols, dist[rows, cols], b, g)


def _matches_to_table(rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, b: int,
                      g: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`_match_table` from the matches as (row, gallery index, distance) triples (T,),
    sorted by row then gallery index; ``g``: the gallery size (the index pad)."""
    num = torch.bincount(rows, minlength=b)  # (B,)
    width = max(int(num.max()), 1) if len(rows) else 1
    ordinal = torch.arange(len(rows), device=rows.device) - (torch.cumsum(num, 0) - num)[rows]
    mdist = torch.full((b, width), math.inf, dtype=values.dtype, device=values.device)
    mindex = torch.full((b, width), g, dtype=torch.int64, device=values.device)
    mdist[rows, ordinal] = values
    mindex[rows, ordinal] = cols
    mdist, order = torch.sort(mdist, dim=1, stable=True)  # ties keep the lower index first
    return mdist, mindex.gather(1, order), num


def _near_nonmatches(dist: torch.Tensor, codes: torch.Tensor, mdist: torch.Tensor,
                     num: torch.Tensor) -> torch.Tensor:
    """(B, G) bool: kept non-matches not farther than the query's last match.

    The other entries rank after every match and change no metric, so they are never counted.
    """
    last = mdist.gather(1, (num - 1).clamp(min=0)[:, None])  # (B, 1) the farthest match
    last = torch.where(num[:, None] > 0, last, -math.inf)
    return (codes == 1) & (dist <= last)


def _tie_correction(values: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
                    mdist: torch.Tensor, mindex: torch.Tensor) -> torch.Tensor:
    """(T,) for entries at exactly a match's distance: the tied matches with a lower gallery
    index, which a stable sort ranks first."""
    return ((mdist[rows] == values[:, None]) & (mindex[rows] < cols[:, None])).sum(1)


def _histogram_slots(dist: torch.Tensor, near: torch.Tensor, mdist: torch.Tensor,
                     mindex: torch.Tensor, offset: int = 0) -> torch.Tensor:
    """Flat slots ``row * (M + 1) + j`` of the near non-matches, j = matches ranked before it.

    Few near entries (a good model: most of the gallery lies beyond the last match) are
    searched one by one in their own row; otherwise every row is searched at once and the
    other entries are sent to the ignored slot j = M. ``dist`` may be a block of gallery
    columns starting at ``offset`` (``mindex`` holds global gallery indices).
    """
    b, width = mdist.shape
    offsets = torch.arange(b, device=dist.device)[:, None] * (width + 1)  # (B, 1)
    if int(near.sum()) * width <= dist.numel():
        rows, cols = near.nonzero(as_tuple=True)  # (T,)
        values = dist[rows, cols]
        before = torch.searchsorted(mdist[rows], values[:, None])[:, 0]
        t = (mdist[rows, before.clamp(max=width - 1)] == values).nonzero()[:, 0]  # ties
        before[t] += _tie_correction(values[t], rows[t], cols[t] + offset, mdist, mindex)
        return offsets[rows, 0] + before
    before = torch.searchsorted(mdist, dist.contiguous())  # (B, G) matches strictly closer
    tied = near & (mdist.gather(1, before.clamp(max=width - 1)) == dist)
    rows, cols = tied.nonzero(as_tuple=True)  # rare: exact ties with a match
    before[rows, cols] += _tie_correction(dist[rows, cols], rows, cols + offset, mdist, mindex)
    return (offsets + torch.where(near, before, width)).flatten()


def _count_before(dist: torch.Tensor, codes: torch.Tensor, mdist: torch.Tensor,
                  mindex: torch.Tensor, num: torch.Tensor, offset: int = 0) -> torch.Tensor:
    """(B, M + 1) int64 histogram: kept non-matches of this block of gallery columns (from
    ``offset``) ranked before exactly j matches; histograms of the blocks of a gallery add up."""
    b, width = mdist.shape
    near = _near_nonmatches(dist, codes, mdist, num)
    slots = _histogram_slots(dist, near, mdist, mindex, offset)
    return torch.bincount(slots, minlength=b * (width + 1)).view(b, width + 1)


def _rank_chunk(dist: torch.Tensor, codes: torch.Tensor, ranks: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-query AP, INP, CMC hits and validity of one chunk of B queries, without a sort.

    Only the matches are sorted (a few per query). Each kept non-match not farther than the
    last match is placed among them by binary search; a histogram of those places gives, for
    the j-th match, the number of non-matches ranked before it, hence its rank. Ties in
    distance rank the lower gallery index first, exactly as a stable sort of the row would.

    Args:
        dist: (B, G) distances; codes: (B, G) from :func:`_gallery_codes`; ranks: (L,) 1..L.

    Returns:
        ap (B,) float64, inp (B,) float64, cmc_hits (B, L) bool, valid (B,) bool.
    """
    mdist, mindex, num = _match_table(dist, codes)
    return _chunk_metrics(_count_before(dist, codes, mdist, mindex, num), num, ranks)


def _chunk_metrics(histogram: torch.Tensor, num: torch.Tensor, ranks: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """AP, INP, CMC hits and validity of B queries from their histogram (B, M + 1) (see
    :func:`_count_before`) and match counts ``num`` (B,); returns as :func:`_rank_chunk`."""
    width = histogram.shape[1] - 1
    negatives = histogram.cumsum(1)[:, :width]  # (B, M) non-matches before the j-th match
    ordinal = torch.arange(1, width + 1, device=num.device, dtype=torch.float64)  # (M,)
    hit_rank = ordinal + negatives.to(torch.float64)  # (B, M) 1-based rank among kept
    is_match = ordinal[None, :] <= num[:, None]
    precision = torch.where(is_match, ordinal / hit_rank, 0.0)  # (B, M)
    valid = num > 0
    ap = precision.cumsum(1)[:, -1] / num.clamp(min=1)  # sequential sum: chunk-independent
    last = hit_rank.gather(1, (num - 1).clamp(min=0)[:, None])[:, 0]
    inp = torch.where(valid, num / last, 0.0)  # (B,)
    first = torch.where(valid, hit_rank[:, 0], math.inf)
    return ap, inp, first[:, None] <= ranks[None, :], valid


def reid_metrics(
    distmat: ArrayLike,
    query_ids: ArrayLike,
    gallery_ids: ArrayLike,
    query_cams: ArrayLike | None = None,
    gallery_cams: ArrayLike | None = None,
    protocol: str = "market",
    max_rank: int = 50,
    chunk_size: int = 256,
    device: str | torch.device | None = None,
    exclude_self: bool = False,
    exclude: ArrayLike | None = None,
) -> ReidResult:
    """CMC, mAP and mINP of a query x gallery distance matrix (smaller = more similar).

    Args:
        distmat: (Q, G) distances, numpy or torch. NaN is rejected.
        query_ids: (Q,) integer identities of the queries.
        gallery_ids: (G,) integer identities of the gallery.
        query_cams, gallery_cams: (Q,), (G,) camera ids, both or neither. Used by ``"market"``
            only; without them ``"market"`` applies no camera filter (a custom dataset without
            cameras) but still removes junk. ``"seed"`` ignores them.
        protocol: ``"market"``: per query, remove gallery entries with the same id and the same
            camera, and entries with id -1 (junk); id 0 (distractors) stay as wrong matches.
            ``"seed"``: no camera filter, no junk handling.
        max_rank: CMC length (capped at G).
        chunk_size: queries ranked at a time; memory is O(chunk_size * G).
        device: where chunks are ranked (e.g. ``"cuda"``); default: ``distmat``'s device
            (CPU for numpy). Only one chunk at a time is moved there.
        exclude_self: query and gallery are the same set (Q == G required): remove the
            diagonal entry (the query itself) from each query's ranking. Valid with both
            protocols.
        exclude: (Q,) or (Q, C) int gallery indices removed from each query's ranking, -1
            for none (e.g. byte-identical copies of the query: the query itself), with both
            protocols.

    Returns:
        :class:`ReidResult`. A match is a kept gallery entry with the query's id. AP =
        (1 / #matches) * sum over matches of precision at that match; INP = #matches / rank of
        the last match; CMC[k] = first match at rank <= k + 1. Ranks count kept entries only.
        Each metric is averaged over valid queries (at least one match); others are skipped.
        Ties in distance are broken deterministically, as a stable sort would: the gallery
        entry with the lower index ranks first. No row is sorted: only each query's matches
        are, and the other entries are counted between them by binary search, so the cost is
        O(Q * G * log(matches)) and identical to walking a sorted ranking.

    Raises:
        ValueError: shapes or arguments mismatch, NaN distances, or no query has a match.
    """
    _check_reid_args(protocol, max_rank, chunk_size)
    dist, qids, gids, cams = _reid_inputs(distmat, query_ids, gallery_ids, query_cams,
                                          gallery_cams, exclude_self)
    q, g = dist.shape
    excluded = _exclusions(exclude, q, g)
    dev = torch.device(device) if device is not None else dist.device
    gids = gids.to(dev)
    cams = None if cams is None else (cams[0].to(dev), cams[1].to(dev))
    ranks = torch.arange(1, min(max_rank, g) + 1, device=dev, dtype=torch.int32)  # (L,)
    totals = _Totals(len(ranks))
    for start in range(0, q, chunk_size):
        stop = min(start + chunk_size, q)
        self_idx = _chunk_exclusions(start, stop, exclude_self, excluded)
        chunk_cams = None if cams is None else (cams[0][start:stop], cams[1])
        chunk = dist[start:stop].to(dev)  # (B, G)
        if torch.isnan(chunk).any():
            raise ValueError(f"distmat: contains NaN (in rows {start}..{stop - 1})")
        codes = _gallery_codes(qids[start:stop].to(dev), gids, chunk_cams,
                               protocol == "market", self_idx)
        totals.add(*_rank_chunk(chunk, codes, ranks))
    return totals.result(q, protocol)


def _exclusions(exclude: ArrayLike | None, q: int, g: int) -> torch.Tensor | None:
    """``exclude`` as a (Q, C) int64 tensor of -1 (none) or indices below ``g``."""
    ex = None if exclude is None else to_tensor(exclude, "exclude")
    if ex is not None and (ex.is_floating_point() or ex.ndim not in (1, 2) or len(ex) != q
                           or (ex.numel() and not -1 <= int(ex.min()) <= int(ex.max()) < g)):
        raise ValueError(f"exclude: expected (Q = {q},) or (Q, C) gallery indices (-1: "
                         f"none) below {g}, got {tuple(ex.shape)} {ex.dtype}")
    return None if ex is None else ex.to(torch.int64).reshape(q, -1)


def _chunk_exclusions(start: int, stop: int, exclude_self: bool,
                      excluded: torch.Tensor | None) -> torch.Tensor | None:
    """(B, C) gallery indices removed from queries ``start..stop - 1`` (-1: none), or None."""
    parts = ([torch.arange(start, stop)[:, None]] if exclude_self else []) + (
        [excluded[start:stop]] if excluded is not None else [])
    return torch.cat(parts, dim=1) if parts else None


_NO_MATCH_HINT = {
    "market": (". The market protocol drops the gallery images of the query's identity taken "
               "by the query's own camera (and junk, identity -1), so with one camera for all "
               "images no match is left. Evaluate without the camera filter (attreid evaluate "
               "--protocol seed; Python: protocol=\"seed\"), or give the images their real "
               "camera ids"),
    "seed": ": no query identity appears in the gallery",
}


class _Totals:
    """Per-query AP / INP and CMC counts of the valid queries, gathered chunk by chunk."""

    def __init__(self, length: int) -> None:
        self.aps: list[torch.Tensor] = []
        self.inps: list[torch.Tensor] = []
        self.cmc_counts = torch.zeros(length, dtype=torch.int64)
        self.num_valid = 0

    def add(self, ap: torch.Tensor, inp: torch.Tensor, cmc_hits: torch.Tensor,
            valid: torch.Tensor) -> None:
        self.aps.append(ap[valid].cpu())
        self.inps.append(inp[valid].cpu())
        self.cmc_counts += cmc_hits[valid].sum(0).cpu()
        self.num_valid += int(valid.sum())

    def result(self, q: int, protocol: str) -> ReidResult:
        if self.num_valid == 0:
            raise ValueError(f"no valid query: none of the {q} queries has a match in the "
                             f"gallery under protocol {protocol!r}{_NO_MATCH_HINT[protocol]}")
        cmc = self.cmc_counts.numpy().astype(np.float64) / self.num_valid
        cmc.setflags(write=False)
        return ReidResult(cmc=cmc, mAP=float(torch.cat(self.aps).numpy().mean()),
                          mINP=float(torch.cat(self.inps).numpy().mean()),
                          num_valid_queries=self.num_valid, num_queries=q)


GalleryBlock = tuple[ArrayLike, ArrayLike, Union[ArrayLike, None]]
"""One block of consecutive gallery rows: features (g, D), identities (g,), cameras (g,) or
``None``."""


def reid_metrics_streamed(
    query_features: ArrayLike,
    query_ids: ArrayLike,
    gallery_blocks: Callable[[], Iterable[GalleryBlock]],
    query_cams: ArrayLike | None = None,
    protocol: str = "market",
    metric: str = "euclidean",
    max_rank: int = 50,
    chunk_size: int = 512,
    exclude_self: bool = False,
    exclude: ArrayLike | None = None,
) -> ReidResult:
    """:func:`reid_metrics` of queries against a gallery read block by block (e.g. from a
    memory-mapped :class:`attreid.inference.features.FeatureStore`), never holding the whole
    gallery.

    Each chunk of ``chunk_size`` queries reads the gallery twice: the first pass keeps only
    each query's matches (its identity, a few per query), the second counts the non-matches
    ranked between them; distances are :func:`pairwise_distance` of the query chunk and
    one gallery block. Memory: O(chunk_size * block rows), independent of the gallery size;
    nothing of size Q x G or G x D is held.

    Args:
        query_features: (Q, D) query embeddings.
        query_ids: (Q,) integer identities; query_cams: (Q,) cameras, or ``None`` when the
            gallery blocks carry no cameras.
        gallery_blocks: called once per pass, returns an iterable of blocks (see
            :data:`GalleryBlock`) that cover the gallery in the same order every time.
        protocol, max_rank, exclude_self, exclude: as in :func:`reid_metrics`
            (``exclude_self``: the queries are the gallery itself, in the same order;
            ``exclude``: global gallery indices, -1 for none).
        metric: distance between embeddings, see :func:`pairwise_distance`.
        chunk_size: queries ranked at a time.

    Returns:
        the same :class:`ReidResult` as :func:`reid_metrics` on the full distance matrix.

    Raises:
        ValueError: shapes or arguments mismatch, cameras on one side only, blocks that
            differ between passes, NaN distances, or no query has a match.
    """
    _check_reid_args(protocol, max_rank, chunk_size)
    if metric not in DISTANCE_METRICS:
        raise ValueError(f"metric: got {metric!r}, expected one of {DISTANCE_METRICS}")
    qf = to_tensor(query_features, "query_features")
    if qf.ndim != 2 or len(qf) == 0:
        raise ValueError(f"query_features: expected a non-empty (Q, D), got {tuple(qf.shape)}")
    q = len(qf)
    qids = ids_1d(query_ids, "query_ids", q, "query_features rows")
    qcams = None if query_cams is None else ids_1d(query_cams, "query_cams", q,
                                                   "query_features rows")
    excluded = _exclusions(exclude, q, 2**62)  # the gallery size is known after a pass
    totals = None
    for start in range(0, q, chunk_size):
        stop = min(start + chunk_size, q)
        chunk = _QueryChunk(qf[start:stop], qids[start:stop],
                            None if qcams is None else qcams[start:stop],
                            _chunk_exclusions(start, stop, exclude_self, excluded), protocol,
                            metric)
        mdist, mindex, num, g = chunk.match_table(gallery_blocks())
        if exclude_self and g != q:
            raise ValueError(f"exclude_self: requires Q == G (the same set), got {q} x {g}")
        histogram = torch.zeros(len(num), mdist.shape[1] + 1, dtype=torch.int64)
        for offset, dist, codes in chunk.scored(gallery_blocks(), g):
            histogram += _count_before(dist, codes, mdist, mindex, num, offset)
        ranks = torch.arange(1, min(max_rank, g) + 1, dtype=torch.int32)  # (L,)
        totals = totals or _Totals(len(ranks))
        totals.add(*_chunk_metrics(histogram, num, ranks))
    return totals.result(q, protocol)  # type: ignore[union-attr]  # q > 0: set


class _QueryChunk:
    """B queries scored against a gallery given block by block."""

    def __init__(self, features: torch.Tensor, ids: torch.Tensor, cams: torch.Tensor | None,
                 excluded: torch.Tensor | None, protocol: str, metric: str) -> None:
        self.features, self.ids, self.cams = features, ids, cams
        self.self_idx = excluded  # (B, C) global gallery indices left out, -1: none
        self.market, self.metric = protocol == "market", metric

    def scored(self, blocks: Iterable[GalleryBlock], expected: int | None = None
               ) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """``(offset, distances (B, g), codes (B, g))`` of each block; checks that the blocks
        cover ``expected`` rows when given."""
        offset = 0
        for features, ids, cams in blocks:
            g = len(features)
            gids = ids_1d(ids, "gallery block ids", g, "its features")
            if (cams is None) != (self.cams is None):
                raise ValueError("query_cams and the gallery blocks' cameras: give both or "
                                 "neither")
            pair = None if cams is None or self.cams is None else \
                (self.cams, ids_1d(cams, "gallery block cameras", g, "its features"))
            dist = pairwise_distance(self.features, features, self.metric)  # (B, g)
            if torch.isnan(dist).any():
                raise ValueError(f"gallery rows {offset}..{offset + g - 1}: NaN distances")
            yield offset, dist, _gallery_codes(self.ids, gids, pair, self.market,
                                               self.self_idx, offset)
            offset += g
        if offset == 0 or (expected is not None and offset != expected):
            raise ValueError(f"gallery_blocks: gave {offset} rows"
                             + (f", {expected} in the first pass" if expected else ""))

    def match_table(self, blocks: Iterable[GalleryBlock]
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """First pass: :func:`_match_table` of the whole gallery, and its size G."""
        rows, cols, values, g = [], [], [], 0
        for offset, dist, codes in self.scored(blocks):
            r, c = (codes == 2).nonzero(as_tuple=True)
            rows.append(r)
            cols.append(c + offset)
            values.append(dist[r, c])
            g = offset + codes.shape[1]
        order = torch.sort(torch.cat(rows), stable=True).indices  # by row, then index
        table = _matches_to_table(torch.cat(rows)[order], torch.cat(cols)[order],
                                  torch.cat(values)[order], len(self.ids), g)
        return (*table, g)


# --------------------------------------------------------------------------------------------
# Attributes
# --------------------------------------------------------------------------------------------
