"""The readers on the real Market-1501 copies in ../shared/data (skipped when absent)."""

from __future__ import annotations

import warnings

import pytest

from attreid.data.course import read_course
from attreid.data.market import read_market
from attreid.data.splits import split_by_ids

pytestmark = pytest.mark.realdata


@pytest.fixture(scope="module")
def market(shared_data):
    return read_market(shared_data / "market1501")


@pytest.fixture(scope="module")
def course(shared_data):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return read_course(shared_data / "market1501-trento")


def test_market_counts(market):
    assert (len(market.train), len(market.gallery), len(market.query)) == (12936, 19732, 3368)
    assert len({r.pid for r in market.train}) == 751
    assert len({r.pid for r in market.query}) == 750
    assert sum(r.pid == 0 for r in market.gallery) == 2798
    assert sum(r.pid == -1 for r in market.gallery) == 3819
    assert all(r.attributes is not None for r in market.train)


def _labels(ds, pid, split="train"):
    return next(r.attributes for r in getattr(ds, split) if r.pid == pid)


def test_market_attributes_match_hand_read_rows(market):
    # Read by hand from market_attribute.mat (train struct, ids 0002, 0007, 0010; test id 0001).
    #              age bp bag hb clo dn up hair hat gen upcolor downcolor
    assert _labels(market, 2) == (1, 0, 0, 0, 1, 1, 1, 0, 0, 0, 2, 6)   # red top, blue lower
    assert _labels(market, 7) == (1, 0, 1, 0, 1, 1, 1, 0, 0, 0, 1, 0)   # white top, black lower
    assert _labels(market, 10) == (1, 0, 1, 0, 0, 1, 1, 1, 0, 1, 2, 6)  # dress, female
    assert _labels(market, 1, "query") == (1, 0, 0, 0, 0, 1, 1, 1, 0, 1, 1, 1)


def test_market_multicolour_count(market):
    ids = {r.pid: r.attributes for r in market.train}
    assert sum(labels[10] == 8 for labels in ids.values()) == 78


def test_course_counts(course):
    assert len(course.train) == 12989
    assert len({r.pid for r in course.train}) == 751
    assert len(course.gallery) == 19679 and len(course.query) == 2248
    assert len(course.duplicates) == 9
    assert all(copy.read_bytes() == orig.read_bytes() for copy, orig in course.duplicates.items())


def test_course_attributes_match_hand_read_rows(course):
    # annotations_train.csv lines 2 and 3 (ids 474 and 857), read by hand.
    assert _labels(course, 474) == (1, 0, 0, 0, 0, 1, 1, 1, 0, 1, 1, 1)  # white top and lower
    assert _labels(course, 857) == (1, 0, 1, 0, 1, 1, 1, 1, 0, 1, 0, 8)  # black top, brown lower


def test_course_study_split(course):
    assert len(course.val_ids) == 225 and course.val_ids[:2] == (474, 857)
    train, val = split_by_ids(course.train, course.val_ids)
    assert len({r.pid for r in train}) == 526 and len({r.pid for r in val}) == 225
    assert len(train) + len(val) == 12989
