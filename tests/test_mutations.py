"""The mutation list stays replayable (tests/mutations.py)."""

from mutations import MUTATIONS, _applies


def test_every_listed_mutation_still_applies():
    """Catches: code that moved on while its mutation's text stayed (the replay would report it
    stale, never caught or survived)."""
    stale = [why for m in MUTATIONS if (why := _applies(m))]
    assert not stale, stale
