"""The path grammar and the grant pattern language."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from airflow_provider_mlsecrets.errors import InvalidInput
from airflow_provider_mlsecrets.paths import (
    MAX_PATH_LENGTH,
    matches,
    parse_path,
    parse_pattern,
    parse_prefix,
)

SEGMENT = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,20}", fullmatch=True)
PATHS = st.lists(SEGMENT, min_size=1, max_size=8).map("/".join)


@pytest.mark.parametrize("path", ["a", "ml/openai/api_key", "_x/y.z-1", "A/" * 15 + "B"])
def test_valid_paths_are_accepted(path: str) -> None:
    assert parse_path(path) == path


@pytest.mark.parametrize("path", [
    "", "/a", "a/", "a//b", "..", "a/../b", "./a", "a/.", ".hidden", "a b", "a\nb", "a\x00b",
    "ä", "a/" * 16 + "b", "x" * 65, "a/" + "b" * 255, "a\\b", "-a",
])
def test_invalid_paths_are_refused_with_the_grammar(path: str) -> None:
    with pytest.raises(InvalidInput, match="segments joined by '/'"):
        parse_path(path)


def test_a_non_string_path_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        parse_path(b"a/b")  # type: ignore[arg-type]


@given(PATHS)
def test_every_generated_path_parses_and_matches_itself_and_double_star(path: str) -> None:
    if len(path) > MAX_PATH_LENGTH:
        with pytest.raises(InvalidInput):
            parse_path(path)
        return
    assert parse_path(path) == path
    assert matches(parse_pattern(path), path)
    assert matches("**", path)


@given(st.text(max_size=300))
def test_arbitrary_text_either_parses_to_itself_or_is_refused_cleanly(text: str) -> None:
    try:
        assert parse_path(text) == text
    except InvalidInput as exc:
        assert "invalid path" in str(exc)
    else:
        assert ".." not in text.split("/") and "" not in text.split("/")


@given(PATHS, PATHS)
def test_prefix_patterns_match_exactly_the_paths_below_them(base: str, rest: str) -> None:
    if len(base) + len(rest) + 1 > MAX_PATH_LENGTH:
        return
    assert matches(f"{base}/**", f"{base}/{rest}")
    assert not matches(f"{base}/**", f"{base}x/{rest}")


@pytest.mark.parametrize(("pattern", "path", "expected"), [
    ("ml/*", "ml/a", True), ("ml/*", "ml/a/b", False), ("ml/**", "ml/a/b", True),
    ("ml/**", "mlx/a", False), ("**/key", "key", True), ("**/key", "a/b/key", True),
    ("a/**/b", "a/b", True), ("a/**/b", "a/x/y/b", True), ("a/**/b", "a/x/y/c", False),
    ("ml/api_*", "ml/api_x", True), ("ml/api_*", "ml/api/x", False), ("a.b", "axb", False),
])
def test_pattern_matching(pattern: str, path: str, expected: bool) -> None:
    assert matches(parse_pattern(pattern), path) is expected


@pytest.mark.parametrize("pattern", ["", "a//b", "***", "a/***/b", "../a", "a b"])
def test_invalid_patterns_are_refused(pattern: str) -> None:
    with pytest.raises(InvalidInput):
        parse_pattern(pattern)


@pytest.mark.parametrize("prefix", ["", "ml", "ml/", "ml/open"])
def test_prefixes(prefix: str) -> None:
    assert parse_prefix(prefix) == prefix


@pytest.mark.parametrize("prefix", ["../", "a/../b", "a b", "%"])
def test_bad_prefixes_are_refused(prefix: str) -> None:
    with pytest.raises(InvalidInput):
        parse_prefix(prefix)
