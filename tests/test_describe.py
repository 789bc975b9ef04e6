"""Free-text descriptions read into attribute constraints (attreid.search.describe)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from attreid.schema import TASKS
from attreid.search.describe import COLOURS, NOUNS, DescriptionError, describe

CLASSES = {t.name: t.classes for t in TASKS}


@pytest.mark.parametrize("text, want", [
    ("woman with a backpack", {"gender": "female", "backpack": "yes"}),
    ("man in a red T-shirt and blue jeans",
     {"gender": "male", "up": "short", "upcolor": "red", "clothes": "pants", "down": "long",
      "downcolor": "blue"}),
    ("Woman with long hair, grey skirt; no hat", {"gender": "female", "hair": "long",
                                                 "clothes": "dress", "downcolor": "gray",
                                                 "hat": "no"}),
    ("elderly man without a bag but with a cap", {"age": "old", "gender": "male", "bag": "no",
                                                  "hat": "yes"}),
    ("girl, not carrying a handbag or backpack", {"gender": "female", "handbag": "no",
                                                  "backpack": "no"}),
    ("short-sleeved striped shirt, black shorts",
     {"up": "short", "upcolor": "multicolour", "clothes": "pants", "down": "short",
      "downcolor": "black"}),
    ("child in long sleeves", {"age": "young", "up": "long"}),
    ("navy jacket, khaki trousers", {"upcolor": "blue", "clothes": "pants", "down": "long",
                                      "downcolor": "brown"}),
])
def test_descriptions_read_into_constraints(text, want):
    got = describe(text)
    assert got.constraints == want
    for task, value in got.constraints.items():
        assert value in CLASSES[task]  # every value is one the index can search
    read = {pair for _, pairs in got.reading for pair in pairs.split(", ")}
    assert read == {f"{t}={v}" for t, v in want.items()}  # the reading shows all of it, once


def test_the_reading_names_the_phrases():
    got = describe("woman with a red top")
    assert got.explain() == "woman -> gender=female; red top -> upcolor=red"
    assert got.as_attributes() == "gender=female,upcolor=red"


@pytest.mark.parametrize("text, named", [
    ("woman with a red backpack", ["'red' in 'red backpack'", "no colour attribute"]),
    ("tall man", ["'tall'", "height is not an attribute"]),
    ("young woman", ["'young'", "ambiguous"]),
    ("man in an orange jacket", ["'orange'", "not one of Market-1501's colours"]),
    ("brown jacket", ["'brown jacket'", "brown is not a upcolor value"]),
    ("pink shirt and a man in a woman's coat", ["contradicts", "gender=female against "
                                                "gender=male"]),
    ("dressed in red", ["'red'", "no garment named after it"]),
    ("blonde woman", ["'blonde'", "hair colour"]),
    ("no jacket", ["after a negation"]),
    ("a person", ["no attribute in it"]),
    ("xyzzy backpack", ["'xyzzy'", "not in the vocabulary"]),
])
def test_what_cannot_be_read_is_refused_by_name(text, named):
    with pytest.raises(DescriptionError) as caught:
        describe(text)
    message = str(caught.value)
    assert text in message
    for part in named:
        assert part in message, (part, message)


def test_the_vocabulary_maps_only_to_searchable_values_and_is_documented():
    for word, noun in NOUNS.items():
        for task, value in noun.implies:
            assert value in CLASSES[task], word
    for word, colour in COLOURS.items():
        assert colour in CLASSES["upcolor"] + CLASSES["downcolor"], word
    doc = (Path(__file__).parents[1] / "docs" / "DESCRIPTIONS.md").read_text()
    documented = set(re.findall(r"[a-z]+(?:-[a-z]+)*", doc.lower()))
    missing = sorted((set(NOUNS) | set(COLOURS)) - documented)
    assert not missing, f"docs/DESCRIPTIONS.md does not list {missing}"


def test_a_description_joins_the_chips_and_a_clash_is_named():
    from attreid.search.constraints import QueryError
    from attreid.search.describe import with_description

    assert with_description("hat=no", "") == ("hat=no", None)
    joined, read = with_description("hat=no", "woman with a backpack")
    assert joined == "hat=no,gender=female,backpack=yes" and read is not None
    with pytest.raises(QueryError, match="gender=male \\(attributes\\) against gender=female"):
        with_description("gender=male", "woman")
    assert issubclass(DescriptionError, QueryError)  # the service answers 422, the CLI a line
