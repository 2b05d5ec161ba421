"""Every query parameter of GET /users at its extremes: 200 or 422, never a 5xx.

A property test (hypothesis) sends each parameter values at and past its
limits and of every wrong kind: huge and negative numbers, floats, text with
control characters and lone surrogates, very long text, timestamps at the
edges of what a year, an offset and a microsecond can be, repeated
parameters. Whatever the combination, the answer is a page or a 422 that
names the parameter.
"""

from __future__ import annotations

from datetime import datetime
from urllib.parse import quote

from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from users_service.models import SortValue, UserListQuery

PARAMETERS = tuple(UserListQuery.model_fields)

integers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([-1, 0, 1, 49, 50, 150, 151, 500, 501, 2**31, 2**63, -(2**63) - 1]),
).map(str)
numbers = st.one_of(
    integers,
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["nan", "inf", "-inf", "1e309", "0x10", "1_000", " 3", "3 ", "٣", "+3"]),
)
offsets = st.sampled_from(["Z", "+00:00", "-23:59", "+23:59", "+14:00", "-12:00", "", "+24:00"])
timestamps = st.one_of(
    st.builds(
        lambda moment, offset: moment.isoformat() + offset,
        st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59)),
        offsets,
    ),
    st.sampled_from(
        [
            "9999-12-31T23:59:59.999999-23:59",
            "0001-01-01T00:00:00+14:00",
            "0000-01-01T00:00:00Z",
            "10000-01-01T00:00:00Z",
            "2026-02-30T00:00:00Z",
            "2026-11-30T24:00:00Z",
            "2026-11-30",
            "2026-11-30T00:00:00.0000000001Z",
        ]
    ),
)
texts = st.one_of(
    st.text(max_size=40),
    st.text(min_size=190, max_size=1100),
    st.sampled_from(["\x00", "\ud800", "a\udfffb", "%", "_", "\\", "'; DROP TABLE users; --"]),
)
sorts = st.one_of(st.sampled_from(SortValue.__args__), texts)  # type: ignore[attr-defined]
booleans = st.one_of(st.sampled_from(["true", "false", "1", "0", "yes", "TRUE", "", "2"]), texts)

VALUES = {
    "limit": numbers,
    "cursor": texts,
    "sort": sorts,
    "email": texts,
    "name": texts,
    "min_age": numbers,
    "max_age": numbers,
    "created_after": st.one_of(timestamps, texts, numbers),
    "created_before": st.one_of(timestamps, texts, numbers),
    "include_total": booleans,
}
assert set(VALUES) == set(PARAMETERS), "give every query parameter its extremes"

queries = st.lists(
    st.one_of(*(st.tuples(st.just(name), values) for name, values in VALUES.items())),
    min_size=1,
    max_size=6,
)


def encode(value: str) -> str:
    return quote(value.encode("utf-8", "surrogatepass"), safe="")


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(query=queries)
def test_any_query_is_a_page_or_a_422_naming_the_parameter(
    client: TestClient, query: list[tuple[str, str]]
) -> None:
    response = client.get("/users?" + "&".join(f"{name}={encode(v)}" for name, v in query))

    assert response.status_code in (200, 422), (query, response.status_code, response.text)
    if response.status_code == 422:
        problem = response.json()
        assert problem["code"] == "validation_failed"
        named = {tuple(error["loc"][:2]) for error in problem["errors"]}
        assert named <= {("query", name) for name, _ in query}, (query, problem)
    else:
        assert "items" in response.json()
