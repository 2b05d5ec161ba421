"""Which listings may read far more rows than they return (run off the event
loop, in a limited number of turns, bounded in time) and which cannot."""

from __future__ import annotations

import pytest

from users_service.crud import may_scan
from users_service.models import UserListQuery
from users_service.pagination import SortOrder


def scans(sort: str = "created_at", **filters: object) -> bool:
    query = UserListQuery.model_validate({"sort": sort, **filters})
    return may_scan(query, SortOrder.parse(sort))


@pytest.mark.parametrize(
    ("sort", "filters"),
    [
        ("created_at", {}),
        ("-name", {}),
        ("age", {"min_age": 30, "max_age": 40}),
        ("-age", {"min_age": 30}),
        ("created_at", {"created_after": "2026-01-01T00:00:00Z"}),
        ("-created_at", {"created_before": "2026-01-01T00:00:00Z"}),
        ("name", {"email": "ada@example.com", "min_age": 3, "name": "a"}),
        ("age", {"email": "ada@example.com", "include_total": True}),
    ],
)
def test_a_listing_bounded_by_its_index_reads_about_a_page(
    sort: str, filters: dict[str, object]
) -> None:
    assert not scans(sort, **filters)


@pytest.mark.parametrize(
    ("sort", "filters"),
    [
        ("created_at", {"include_total": True}),
        ("created_at", {"name": "ada"}),
        ("name", {"created_after": "2100-01-01T00:00:00Z"}),
        ("created_at", {"min_age": 149}),
        ("email", {"max_age": 0}),
        ("age", {"min_age": 3, "created_before": "1990-01-01T00:00:00Z"}),
    ],
)
def test_a_listing_whose_filters_another_index_serves_may_scan(
    sort: str, filters: dict[str, object]
) -> None:
    assert scans(sort, **filters)
