"""ETags and the conditional headers built on them.

A user's ETag is its version in quotes, a strong tag: `"3"`.
`If-Match` uses the strong comparison (a weak or malformed tag never
matches; `*` matches any existing user); `If-None-Match` the weak one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_ENTITY_TAG = re.compile(r'\s*(W/)?"([\x21\x23-\x7e\x80-\xff]*)"\s*')


def etag(version: int) -> str:
    return f'"{version}"'


@dataclass(frozen=True)
class VersionCondition:
    """The versions a conditional header accepts."""

    matches_any: bool
    versions: frozenset[int]

    def matches(self, version: int) -> bool:
        return self.matches_any or version in self.versions


def _tags(header: str) -> list[tuple[bool, str]] | None:
    """(weak, opaque) for each tag in a list; None when the list is malformed."""
    tags = []
    position = 0
    while position < len(header):
        match = _ENTITY_TAG.match(header, position)
        if match is None:
            return None
        tags.append((match.group(1) is not None, match.group(2)))
        position = match.end()
        if position < len(header):
            if header[position] != ",":
                return None
            position += 1
    return tags


def _versions(opaque_tags: list[str]) -> frozenset[int]:
    return frozenset(
        int(tag)
        for tag in opaque_tags
        if 0 < len(tag) <= 18 and tag.isascii() and tag.isdigit() and tag == str(int(tag))
    )


def if_match_condition(header: str | None) -> VersionCondition | None:
    if header is None:
        return None
    if header.strip() == "*":
        return VersionCondition(matches_any=True, versions=frozenset())
    tags = _tags(header) or []
    return VersionCondition(
        matches_any=False, versions=_versions([opaque for weak, opaque in tags if not weak])
    )


def if_none_match_condition(header: str | None) -> VersionCondition | None:
    if header is None:
        return None
    if header.strip() == "*":
        return VersionCondition(matches_any=True, versions=frozenset())
    tags = _tags(header) or []
    return VersionCondition(matches_any=False, versions=_versions([opaque for _, opaque in tags]))
