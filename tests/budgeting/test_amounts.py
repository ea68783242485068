"""The per-event budget amount the agent counts with is the accounting package's budget measure, for every shape
of event (known and unknown cost and token kinds, first attempts and retries)."""

from __future__ import annotations

import itertools

from budgeting.amounts import TOKEN_KINDS, event_amount
from budgeting.decision import Metric
from services.accounting.measures import TOKEN_KINDS as ACCOUNTING_TOKEN_KINDS
from services.accounting.measures import budget_measures
from services.budget.usage import amount


def test_token_kinds_are_the_accounting_token_kinds() -> None:
    assert TOKEN_KINDS == ACCOUNTING_TOKEN_KINDS


def test_event_amount_equals_the_accounting_budget_measures_for_every_event_shape() -> None:
    checked = 0
    for cost, attempt, *tokens in itertools.product((None, 0, 1_234), (1, 2), *[(None, 7)] * len(TOKEN_KINDS)):
        row = {"cost_micros": cost, "attempt": attempt, **dict(zip(TOKEN_KINDS, tokens, strict=True))}
        measures = budget_measures(row)
        for metric in Metric:
            assert event_amount(metric, row) == amount(metric, measures), (metric, row)
            checked += 1
    assert checked == 3 * 2 * 2 ** len(TOKEN_KINDS) * len(Metric)
