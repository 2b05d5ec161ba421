import pytest

from users_service.preconditions import (
    VersionCondition,
    etag,
    if_match_condition,
    if_none_match_condition,
)


@pytest.mark.parametrize(("version", "expected"), [(1, '"1"'), (42, '"42"')])
def test_etag_is_the_version_as_a_strong_tag(version, expected):
    assert etag(version) == expected


@pytest.mark.parametrize("parse", [if_match_condition, if_none_match_condition])
def test_absent_header_is_no_condition(parse):
    assert parse(None) is None


@pytest.mark.parametrize("parse", [if_match_condition, if_none_match_condition])
@pytest.mark.parametrize("header", ["*", " * ", "\t*"])
def test_star_matches_any_version(parse, header):
    condition = parse(header)

    assert condition is not None
    assert condition.matches_any
    assert all(condition.matches(version) for version in (1, 2, 10**6))


@pytest.mark.parametrize(
    ("header", "versions"),
    [
        ('"1"', {1}),
        ('"42"', {42}),
        (' "3" ', {3}),
        ('"5", "1"', {5, 1}),
        ('"5","1"', {5, 1}),
        ('"5" ,\t"1"', {5, 1}),
        ('"123456789012345678"', {123456789012345678}),
    ],
)
@pytest.mark.parametrize("parse", [if_match_condition, if_none_match_condition])
def test_strong_tags_give_their_versions(parse, header, versions):
    assert parse(header) == VersionCondition(matches_any=False, versions=frozenset(versions))


@pytest.mark.parametrize(
    ("header", "versions"),
    [('W/"1"', set()), ('W/"5", "1"', {1}), ('"5", W/"1"', {5})],
)
def test_if_match_ignores_weak_tags(header, versions):
    assert if_match_condition(header) == VersionCondition(
        matches_any=False, versions=frozenset(versions)
    )


@pytest.mark.parametrize(
    ("header", "versions"),
    [('W/"1"', {1}), ('W/"5", "1"', {5, 1}), ('W/"5", W/"1"', {5, 1})],
)
def test_if_none_match_compares_weakly(header, versions):
    assert if_none_match_condition(header) == VersionCondition(
        matches_any=False, versions=frozenset(versions)
    )


@pytest.mark.parametrize(
    "header",
    [
        "1",
        '"abc"',
        '"01"',
        '"-1"',
        '"+1"',
        '"1.0"',
        '"1 "',
        '""',
        '"\u00b2"',
        '"99999999999999999999999999"',
        'w/"1"',
        '"1',
        '1"',
        "'1'",
        '"1" "2"',
        '"1"; "2"',
        "",
        " ",
        "W/",
    ],
)
@pytest.mark.parametrize("parse", [if_match_condition, if_none_match_condition])
def test_malformed_tags_match_no_version(parse, header):
    condition = parse(header)

    assert condition is not None
    assert not condition.matches_any
    assert condition.versions == frozenset()
    assert not condition.matches(1)


@pytest.mark.parametrize("header", ['"1", 2', '"1", garbage', '*, "1"'])
def test_a_malformed_list_matches_nothing(header):
    condition = if_match_condition(header)

    assert condition is not None
    assert not condition.matches(1)


def test_version_condition_matches_only_its_versions():
    condition = VersionCondition(matches_any=False, versions=frozenset({2, 5}))

    assert [version for version in range(7) if condition.matches(version)] == [2, 5]
