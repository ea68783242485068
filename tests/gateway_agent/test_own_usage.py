"""The compact store of own events: sequence order, exact drops by watermark and ranges, interned attributes."""

from __future__ import annotations

from gateway_agent.budget_digest import IncludedSet, UsageDigest
from gateway_agent.own_usage import OwnUsage


def digest(sequence: int, *, user: str = "u", spend: int = 1, tags: dict[str, str] | None = None) -> UsageDigest:
    return UsageDigest(sequence, 1_000.0 + sequence, "k", user, "m", "m", "p", "r", tags or {}, spend, 2, 1)


def test_a_watermark_and_ranges_drop_exactly_the_included_events() -> None:
    own = OwnUsage()
    for sequence in range(1, 11):
        assert own.add(digest(sequence, spend=sequence)) is not None
    dropped = own.drop_included(IncludedSet.of(3, [(6, 7), (9, 9)]))
    assert sorted(event.amounts[0] for event in dropped) == [1, 2, 3, 6, 7, 9]
    assert [s for s in range(1, 11) if s in own] == [4, 5, 8, 10]
    assert len(own) == 4
    assert sorted(event.amounts[0] for event in own.drop_included(IncludedSet.of(7, []))) == [4, 5]
    assert [s for s in range(1, 11) if s in own] == [8, 10]


def test_removed_and_restored_out_of_order_events_are_held_once_and_read_back_whole() -> None:
    own = OwnUsage()
    own.add(digest(5))
    own.add(digest(2, user="other", tags={"team": "a"}))
    assert own.add(digest(5)) is None
    back = own.digest(2)
    assert back is not None
    assert (back.user_id, dict(back.tags), back.spend_micros, back.tokens, back.requests) == (
        "other",
        {"team": "a"},
        1,
        2,
        1,
    )
    removed = own.remove(5)
    assert removed is not None
    assert removed.attributes["requested_model"] == "m"
    assert own.remove(5) is None
    assert [event.event_time_s for event in own] == [1_002.0]


def test_events_with_the_same_attributes_share_one_attribute_set() -> None:
    own = OwnUsage()
    first = own.add(digest(1, tags={"team": "a"}))
    second = own.add(digest(2, tags={"team": "a"}))
    other = own.add(digest(3, tags={"team": "b"}))
    assert first is not None
    assert second is not None
    assert other is not None
    assert first.attributes is second.attributes
    assert other.attributes is not first.attributes
