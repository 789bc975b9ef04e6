"""Free-text descriptions ("woman with a backpack and a red top") read into attribute
constraints, with no network and no language model: a vocabulary of the words people use for
Market-1501's 12 tasks (Lin et al., "Improving person re-identification by attribute and
identity learning", Pattern Recognition 2019) and their synonyms.

The reader is strict: every word is either grammar (``with``, ``a``, ``wearing``), a word of
the vocabulary, or refused by name, so a description never silently loses what the investigator
typed ("tall", "orange", "red backpack": Market-1501 has no height, no orange and no colour of
bags). A colour or a length describes the garment named after it ("red top", "long hair");
``no``/``without``/``not`` negate the bags and the hat of their clause (clauses end at ``,``,
``;``, ``.``, ``but`` and ``with``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from attreid.schema import TASKS
from attreid.search.constraints import QueryError, parse_attributes

_CLASSES = {t.name: t.classes for t in TASKS}

GRAMMAR = frozenset(
    "a an the with and or in on of who is are has have having wearing wears wear dressed "
    "carrying carries carry holding holds person someone somebody people also plus some "
    "pair clothes clothing colored coloured dark light bright pale".split())
"""Words that carry no attribute and are skipped."""

NEGATIONS = frozenset("no without not never nor".split())

CLAUSE_ENDS = frozenset("but with".split())
"""Words that end a negation's reach (besides punctuation)."""

COLOURS = {
    "black": "black", "white": "white", "red": "red", "purple": "purple", "violet": "purple",
    "lilac": "purple", "yellow": "yellow", "golden": "yellow", "gray": "gray", "grey": "gray",
    "silver": "gray", "blue": "blue", "navy": "blue", "green": "green", "olive": "green",
    "pink": "pink", "brown": "brown", "beige": "brown", "tan": "brown", "khaki": "brown",
    "multicolour": "multicolour", "multicolor": "multicolour", "multicoloured": "multicolour",
    "multicolored": "multicolour", "striped": "multicolour", "patterned": "multicolour",
    "checked": "multicolour", "plaid": "multicolour", "floral": "multicolour",
}
"""Colour word -> Market-1501 colour (``upcolor`` / ``downcolor`` classes)."""

LENGTHS = {"long": "long", "short": "short"}


@dataclass(frozen=True)
class Noun:
    """What a noun says (``implies``), which task its colour (``colour``) and its length
    (``length``) set, and whether ``no``/``without`` may negate it (yes/no tasks)."""

    implies: tuple[tuple[str, str], ...] = ()
    colour: str | None = None
    length: str | None = None
    negatable: str | None = None


def _nouns() -> dict[str, Noun]:
    table: dict[str, Noun] = {}

    def add(words: str, noun: Noun) -> None:
        table.update({w: noun for w in words.split()})

    add("woman women female girl lady she her", Noun((("gender", "female"),)))
    add("man men male boy guy gentleman he his", Noun((("gender", "male"),)))
    add("child kid", Noun((("age", "young"),)))
    add("teenager teen teenage adolescent", Noun((("age", "teenager"),)))
    add("adult", Noun((("age", "adult"),)))
    add("old elderly senior", Noun((("age", "old"),)))
    add("backpack backpacks rucksack knapsack", Noun(negatable="backpack"))
    add("bag bags satchel", Noun(negatable="bag"))
    add("handbag handbags purse clutch", Noun(negatable="handbag"))
    add("hat hats cap caps beanie", Noun(negatable="hat"))
    add("bareheaded", Noun((("hat", "no"),)))
    add("shirt top jacket coat sweater jumper hoodie blouse sweatshirt cardigan polo upper",
        Noun(colour="upcolor"))
    add("t-shirt tshirt tee", Noun((("up", "short"),), colour="upcolor"))
    add("sleeves sleeve sleeved", Noun(colour="upcolor", length="up"))
    add("short-sleeved sleeveless", Noun((("up", "short"),)))
    add("long-sleeved", Noun((("up", "long"),)))
    add("trousers pants jeans slacks", Noun((("clothes", "pants"), ("down", "long")),
                                            colour="downcolor"))
    add("shorts", Noun((("clothes", "pants"), ("down", "short")), colour="downcolor"))
    add("skirt dress", Noun((("clothes", "dress"),), colour="downcolor", length="down"))
    add("lower legs bottom bottoms", Noun(colour="downcolor", length="down"))
    add("hair", Noun(length="hair"))
    add("long-haired", Noun((("hair", "long"),)))
    add("short-haired", Noun((("hair", "short"),)))
    return table


NOUNS = _nouns()
"""Word -> :class:`Noun`; the vocabulary besides :data:`COLOURS` and :data:`LENGTHS`."""

_HINTS = {
    "young": "ambiguous: Market-1501's ages are young (a child), teenager, adult and old; "
             "say child, teenager, adult or old",
    "tall": "height is not an attribute",
    "blonde": "hair colour is not an attribute", "blond": "hair colour is not an attribute",
    "orange": "not one of Market-1501's colours",
}


class DescriptionError(QueryError):
    """A description that cannot be read; the message names the words and why (a
    :class:`~attreid.search.constraints.QueryError`: the service answers 422)."""


@dataclass
class Description:
    """How a description was read: ``constraints`` task -> value, and ``reading``, the
    phrases each constraint came from (``[("red top", "upcolor=red"), ...]``)."""

    text: str
    constraints: dict[str, str] = field(default_factory=dict)
    reading: list[tuple[str, str]] = field(default_factory=list)

    def explain(self) -> str:
        """``"woman -> gender=female; red top -> upcolor=red"``."""
        return "; ".join(f"{phrase} -> {pairs}" for phrase, pairs in self.reading)

    def as_attributes(self) -> str:
        """The constraints as ``task=value`` pairs (the ``attributes`` form of a search)."""
        return ",".join(f"{t}={v}" for t, v in self.constraints.items())


def _clauses(text: str) -> list[list[str]]:
    parts = re.split(r"[,;.!?]", re.sub(r"['’]s\b", "", text.lower()))
    return [re.findall(r"[a-z]+(?:-[a-z]+)*", part) for part in parts]


class _Reader:
    def __init__(self, text: str) -> None:
        self.out = Description(text)
        self.refused: list[str] = []
        self.source: dict[str, str] = {}

    def set(self, task: str, value: str, phrase: str) -> None:
        if value not in _CLASSES[task]:
            self.refused.append(f"{phrase!r} ({value} is not a {task} value in Market-1501: "
                                f"{', '.join(_CLASSES[task])})")
            return
        old = self.out.constraints.get(task)
        if old is not None and old != value:
            self.refused.append(f"{phrase!r} contradicts {self.source[task]!r} "
                                f"({task}={value} against {task}={old})")
            return
        self.out.constraints[task], self.source[task] = value, phrase

    def noun(self, word: str, noun: Noun, colours: list[str], length: str | None,
             negated: bool) -> None:
        phrase = " ".join([*colours, *([length] if length else []), word])
        before = dict(self.out.constraints)
        if noun.negatable:
            self.set(noun.negatable, "no" if negated else "yes", phrase)
        elif negated:
            self.refused.append(f"{phrase!r} after a negation (only bags and the hat can be "
                                "negated)")
            return
        for task, value in noun.implies:
            self.set(task, value, phrase)
        for colour in colours:
            if noun.colour is None:
                self.refused.append(f"{colour!r} in {phrase!r} ({word} has no colour "
                                    "attribute; colours are of the upper and lower body)")
            else:
                self.set(noun.colour, COLOURS[colour], phrase)
        if length is not None:
            if noun.length is None:
                self.refused.append(f"{length!r} in {phrase!r} ({word} has no length "
                                    "attribute)")
            else:
                self.set(noun.length, length, phrase)
        added = [f"{t}={v}" for t, v in self.out.constraints.items() if before.get(t) != v]
        if added:
            self.out.reading.append((phrase, ", ".join(added)))

    def clause(self, words: list[str]) -> None:
        colours: list[str] = []
        length: str | None = None
        negated = False
        for word in words:
            if word in NEGATIONS:
                negated = True
            elif word in CLAUSE_ENDS:
                negated = False
            elif word in COLOURS:
                colours.append(word)
            elif word in LENGTHS and length is None:
                length = word
            elif word in NOUNS:
                self.noun(word, NOUNS[word], colours, length, negated)
                colours, length = [], None
            elif word not in GRAMMAR:
                hint = _HINTS.get(word, "not in the vocabulary")
                self.refused.append(f"{word!r} ({hint})")
        for word in [*colours, *([length] if length else [])]:
            self.refused.append(f"{word!r} (no garment named after it: say e.g. "
                                f"'{word} top' or '{word} trousers')")


def describe(text: str) -> Description:
    """Read a description into attribute constraints.

    Args:
        text: e.g. ``"woman with a backpack, red top and blue jeans"``.

    Returns:
        The :class:`Description`: here gender=female, backpack=yes, upcolor=red,
        clothes=pants, down=long, downcolor=blue.

    Raises:
        DescriptionError: words it cannot map (each named, with why), contradictions (``man``
            and ``woman``), or a text with no attribute at all.
    """
    reader = _Reader(text)
    for words in _clauses(text):
        reader.clause(words)
    if reader.refused:
        raise DescriptionError(f"description {text!r}: cannot read " + "; ".join(reader.refused)
                               + ". Remove or rephrase them (the vocabulary: docs/DESCRIPTIONS.md)")
    if not reader.out.constraints:
        raise DescriptionError(f"description {text!r}: no attribute in it (try e.g. 'woman with "
                               "a backpack and a red top')")
    return reader.out


def with_description(attributes: str, text: str) -> tuple[str, Description | None]:
    """``attributes`` (``task=value`` pairs) joined with the constraints read from ``text``.

    Returns:
        The joined pairs and the :class:`Description` (None for an empty ``text``).

    Raises:
        DescriptionError: ``text`` cannot be read (see :func:`describe`).
        QueryError: bad ``attributes``, or a task both give with different values.
    """
    if not text.strip():
        return attributes, None
    read = describe(text)
    given = {c.task: c.value for c in parse_attributes(attributes)}
    clash = [f"{t}={given[t]} (attributes) against {t}={v} (description)"
             for t, v in read.constraints.items() if t in given and given[t] != v]
    if clash:
        raise QueryError("the attributes and the description disagree: " + "; ".join(clash))
    joined = {**given, **read.constraints}
    return ",".join(f"{t}={v}" for t, v in joined.items()), read
