"""Tests for vault.excludes: shell-style globs on byte paths."""

from __future__ import annotations

import fnmatch
import os

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from vault.errors import UsageError
from vault.excludes import Glob, Matcher, compile_glob, read_exclude_file


def m(pattern: str | bytes, path: bytes, is_dir: bool = False) -> bool:
    return compile_glob(pattern).matches(path, is_dir)


# --- where a pattern applies -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pattern, path, expected",
    [
        # no '/': the last component at any depth
        ("*.tmp", b"/a/b/x.tmp", True),
        ("*.tmp", b"/x.tmp", True),
        ("*.tmp", b"/a/x.tmp/y", False),
        ("*.tmp", b"/a/x.tmpx", False),
        ("cache", b"/home/u/cache", True),
        ("cache", b"/home/u/cache2", False),
        # leading '/': anchored, full path
        ("/home/*/cache", b"/home/u/cache", True),
        ("/home/*/cache", b"/home/u/v/cache", False),
        ("/home/*/cache", b"/x/home/u/cache", False),
        ("/a", b"/a", True),
        ("/a", b"/b/a", False),
        # '/' inside: trailing run of whole components
        ("b/*.tmp", b"/a/b/x.tmp", True),
        ("b/*.tmp", b"/b/x.tmp", True),
        ("b/*.tmp", b"/a/cb/x.tmp", False),
        ("b/*.tmp", b"/a/b/c/x.tmp", False),
        ("a/b", b"/x/a/b", True),
        ("a/b", b"/x/a/b/c", False),
        # '*' and '?' never cross '/'
        ("/a*", b"/ab/c", False),
        ("/a?c", b"/a/c", False),
        ("/a?c", b"/abc", True),
        ("/a/*", b"/a/b", True),
        ("/a/*", b"/a/b/c", False),
    ],
)
def test_placement(pattern: str, path: bytes, expected: bool) -> None:
    assert m(pattern, path) is expected


@pytest.mark.parametrize(
    "pattern, path, expected",
    [
        ("a/**/b", b"/a/b", True),
        ("a/**/b", b"/a/x/b", True),
        ("a/**/b", b"/a/x/y/z/b", True),
        ("a/**/b", b"/q/a/x/b", True),
        ("a/**/b", b"/a/x/bb", False),
        ("/a/**/b", b"/q/a/x/b", False),
        ("/**/b", b"/b", True),
        ("/**/b", b"/x/y/b", True),
        ("**/b", b"/x/y/b", True),
        ("/a/**", b"/a/x", True),
        ("/a/**", b"/a/x/y", True),
        ("/a/**", b"/a", False),
        ("/a/**/**/b", b"/a/b", True),
        ("/a/**/**/b", b"/a/1/2/3/b", True),
        ("/a/**/c/**/e", b"/a/b/c/d/e", True),
        ("/a/**/c/**/e", b"/a/b/d/e", False),
        # '**' inside a component of a pattern with '/' crosses '/'
        ("/home/**.tmp", b"/home/a/b/x.tmp", True),
        ("/home/**.tmp", b"/home/x.tmp", True),
        ("/home/**.tmp", b"/var/x.tmp", False),
        # in a pattern without '/', '**' is '*'
        ("**.tmp", b"/a/b/x.tmp", True),
        ("x**", b"/x/y", False),
        ("x**", b"/a/xyz", True),
        ("**", b"/a/b", True),
    ],
)
def test_globstar(pattern: str, path: bytes, expected: bool) -> None:
    assert m(pattern, path) is expected


@pytest.mark.parametrize(
    "pattern, name, expected",
    [
        ("[abc].txt", b"a.txt", True),
        ("[abc].txt", b"d.txt", False),
        ("[a-c]", b"b", True),
        ("[a-c]", b"d", False),
        ("[!a-c]", b"d", True),
        ("[!a-c]", b"b", False),
        ("[^a-c]", b"d", True),
        ("[]]", b"]", True),
        ("[]a]", b"a", True),
        ("[!]]", b"]", False),
        ("[!]]", b"x", True),
        ("[a-]", b"-", True),
        ("[-a]", b"-", True),
        ("[[:digit:]]x", b"7x", True),
        ("[[:digit:]]x", b"ax", False),
        ("[![:alpha:]_]", b"5", True),
        ("[![:alpha:]_]", b"_", False),
        ("[\\]]", b"]", True),
        ("[a\\-z]", b"-", True),
        ("[a\\-z]", b"m", False),
        # unbalanced '[' is literal, as in the shell
        ("[ab", b"[ab", True),
        ("a[", b"a[", True),
        ("[", b"[", True),
        ("[]", b"[]", True),
        # backslash escapes
        ("\\*", b"*", True),
        ("\\*", b"x", False),
        ("\\?", b"?", True),
        ("\\[a]", b"[a]", True),
        ("\\#x", b"#x", True),
        ("a\\\\b", b"a\\b", True),
        # special regex bytes are literal
        ("a.b", b"a.b", True),
        ("a.b", b"axb", False),
        ("(x)+$", b"(x)+$", True),
        ("a|b", b"a", False),
    ],
)
def test_classes_and_escapes(pattern: str, name: bytes, expected: bool) -> None:
    assert m(pattern, b"/d/" + name) is expected


def test_class_never_matches_slash() -> None:
    assert not m("/a[!x]b", b"/a/b")
    assert not m("/a?b", b"/a/b")
    # a '/' inside brackets ends the component, so '[' is literal and the pattern is two components
    assert m("/x[a/b]", b"/x[a/b]")


def test_newline_and_high_bytes_in_names() -> None:
    assert m("*.tmp", b"/a/\xff\xfe.tmp")
    assert m("?\xfe.tmp".encode("latin-1"), b"/a/\xff\xfe.tmp")
    assert m("a*b", b"/a\nb")
    assert m("/a/**", b"/a/x\n/y")
    assert m(b"[\x80-\xff]x", b"/\x99x")
    assert not m(b"[\x80-\xff]x", b"/\x7fx")
    assert m(b"[!\x80-\xff]x", b"/\x7fx")


def test_str_patterns_are_fsencoded() -> None:
    # A non-UTF-8 name arriving through argv is a surrogate-escaped str.
    pattern = os.fsdecode(b"\xff*.tmp")
    assert m(pattern, b"/a/\xff\xfe.tmp")
    assert m("é*", "/é-x".encode())


def test_dir_only() -> None:
    assert m("cache/", b"/a/cache", is_dir=True)
    assert not m("cache/", b"/a/cache", is_dir=False)
    assert m("/a/b/", b"/a/b", is_dir=True)
    assert not m("/a/b/", b"/a/b")
    g = compile_glob("build/")
    assert g.dir_only and not g.anchored
    # dir-only still applies to ancestors: a file below the directory is inside it
    assert Matcher(["cache/"]).matches_or_parent(b"/a/cache/x")
    assert not Matcher(["cache/"]).matches_or_parent(b"/a/cache")


def test_root_and_repeated_slashes() -> None:
    assert m("/", b"/", is_dir=True)
    assert not m("*", b"/", is_dir=True)
    assert not m("/*", b"/", is_dir=True)
    assert not m("**", b"/", is_dir=True)
    assert m("/*", b"/a")
    assert m("//a//b", b"/a/b")
    assert Matcher(["/"]).matches_or_parent(b"/x/y")


@pytest.mark.parametrize("pattern", ["", "a\\", "/x/\\", "[z-a]", "[[:nope:]]", "a\x00b"])
def test_malformed_patterns(pattern: str) -> None:
    with pytest.raises(UsageError):
        compile_glob(pattern)


def test_relative_path_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        compile_glob("*").matches(b"a/b")


# --- Matcher -------------------------------------------------------------------------------------------------


def test_matcher_any_pattern() -> None:
    matcher = Matcher(["*.tmp", "/var/cache", b"node_modules/"])
    assert matcher.matches(b"/x/y.tmp")
    assert matcher.matches(b"/var/cache")
    assert matcher.matches(b"/p/node_modules", is_dir=True)
    assert not matcher.matches(b"/p/node_modules")
    assert not matcher.matches(b"/var/cache/x")
    assert matcher


def test_empty_matcher() -> None:
    matcher = Matcher([])
    assert not matcher
    assert not matcher.matches(b"/a")
    assert not matcher.matches_or_parent(b"/a/b")
    assert not matcher.could_match_below(b"/")


def test_matches_or_parent() -> None:
    matcher = Matcher(["/var/cache", "*.d"])
    assert matcher.matches_or_parent(b"/var/cache")
    assert matcher.matches_or_parent(b"/var/cache/a/b")
    assert not matcher.matches_or_parent(b"/var/cached/a")
    assert not matcher.matches_or_parent(b"/var")
    assert matcher.matches_or_parent(b"/etc/conf.d/x")
    assert matcher.matches_or_parent(b"/etc/conf.d")
    assert not matcher.matches_or_parent(b"/etc/conf.dx/y")
    assert Matcher(["b/c"]).matches_or_parent(b"/a/b/c/d/e")
    assert not Matcher(["b/c"]).matches_or_parent(b"/a/xb/c/d/e")
    assert Matcher(["/a/**/c"]).matches_or_parent(b"/a/b/c/d")


@pytest.mark.parametrize(
    "patterns, dir_path, expected",
    [
        (["/home/*/docs"], b"/", True),
        (["/home/*/docs"], b"/home", True),
        (["/home/*/docs"], b"/home/u", True),
        (["/home/*/docs"], b"/home/u/docs", True),  # the dir itself matches: everything below is included
        (["/home/*/docs"], b"/home/u/docs/a/b", True),
        (["/home/*/docs"], b"/var", False),
        (["/home/*/docs"], b"/home/u/pics", False),
        (["/home/*/docs", "/var"], b"/var/x", True),
        (["/a/**/z"], b"/a/b/c", True),
        (["/a/**/z"], b"/b", False),
        (["/a/x**/z"], b"/a/xy/q", True),
        (["*.tmp"], b"/anything", True),
        (["b/c"], b"/anything", True),
    ],
)
def test_could_match_below(patterns: list[str], dir_path: bytes, expected: bool) -> None:
    assert Matcher(patterns).could_match_below(dir_path) is expected


# --- exclude files -------------------------------------------------------------------------------------------


def test_read_exclude_file() -> None:
    text = "# comment\n\n*.tmp  \n  lead\n/var/cache/\t\n   \n\\#literal\nfoo\\ \r\nlast"
    assert read_exclude_file(text) == ["*.tmp", "lead", "/var/cache/", "\\#literal", "foo\\ ", "last"]
    assert read_exclude_file("") == []
    # indented lines and comments, and Notepad's byte order mark, as restic reads them (they matched nothing)
    assert read_exclude_file("\ufeff*.log\n  *.tmp\n\tcache\n   # note\n\\ lead\n") == ["*.log", "*.tmp", "cache",
                                                                                   "\\ lead"]
    assert m("\\ lead", b"/x/ lead")
    assert m(read_exclude_file("foo\\ \n")[0], b"/x/foo ")


# --- properties ----------------------------------------------------------------------------------------------

# (the paths asked about are normalized: no '.' or '..' names -- a pattern naming one is resolved lexically)
NAME = st.binary(min_size=1, max_size=12).filter(lambda b: b"/" not in b and b"\0" not in b and b not in (b".", b".."))
PATH = st.lists(NAME, min_size=1, max_size=5).map(lambda parts: b"/" + b"/".join(parts))
# fnmatch agrees with us on these (no '\\' escapes, no '^' negation, no POSIX classes)
SIMPLE_PATTERN = st.text(alphabet="ab*?[]!-.\xff", min_size=1, max_size=8).map(os.fsencode)


@settings(max_examples=300, deadline=None)
@given(pattern=SIMPLE_PATTERN, parents=st.lists(NAME, max_size=3), name=st.binary(min_size=1, max_size=8))
def test_no_slash_pattern_matches_basename_like_fnmatch(pattern: bytes, parents: list[bytes], name: bytes) -> None:
    name = name.replace(b"/", b"_").replace(b"\0", b"_")
    try:
        glob = compile_glob(pattern)
    except UsageError:
        assume(False)
        raise
    path = b"/" + b"/".join([*parents, name])
    # (as text: `?` and a class match one character, a whole UTF-8 sequence; a byte that is not UTF-8 is one
    # character of its own -- fsdecode's surrogate escape -- as usage.md says)
    assert glob.matches(path) == fnmatch.fnmatchcase(os.fsdecode(name), os.fsdecode(pattern))


@settings(max_examples=200, deadline=None)
@given(path=PATH, pattern=SIMPLE_PATTERN)
def test_no_slash_pattern_ignores_depth(path: bytes, pattern: bytes) -> None:
    try:
        glob = compile_glob(pattern)
    except UsageError:
        assume(False)
        raise
    basename = path.rsplit(b"/", 1)[1]
    assert glob.matches(path) == glob.matches(b"/" + basename)


def escape(name: bytes) -> bytes:
    return b"".join(b"\\" + bytes([c]) if c in b"*?[]\\!" else bytes([c]) for c in name)


@settings(max_examples=200, deadline=None)
@given(path=PATH, other=PATH)
def test_escaped_anchored_path_matches_only_itself_and_below(path: bytes, other: bytes) -> None:
    matcher = Matcher([escape(path)])
    assert matcher.matches(path)
    assert matcher.matches_or_parent(path + b"/child")
    assert matcher.matches(other) == (other == path)
    assert matcher.matches_or_parent(other) == (other == path or other.startswith(path + b"/"))


@settings(max_examples=200, deadline=None)
@given(parts=st.lists(NAME, min_size=2, max_size=6), k=st.integers(min_value=1, max_value=5))
def test_could_match_below_is_conservative(parts: list[bytes], k: int) -> None:
    """Whenever a path matches, could_match_below is True for every ancestor directory."""
    path = b"/" + b"/".join(parts)
    pattern = b"/" + b"/".join(escape(p) if i % 2 else b"*" for i, p in enumerate(parts[:k]))
    matcher = Matcher([pattern])
    if matcher.matches_or_parent(path):
        for i in range(len(parts)):
            assert matcher.could_match_below(b"/" + b"/".join(parts[:i]))


def test_case_folding_keeps_bracket_ranges_and_uses_simple_mappings():
    """Folding lower-cased the pattern's text before parsing it: `[Z-a]` became the reversed `[z-a]` (a usage
    error naming a pattern nobody typed), `[A-z]` lost its punctuation, and `İ` became `i` plus a combining dot
    where restic (Go) takes `i`."""
    from vault.excludes import compile_glob

    def m(pattern: str, path: str) -> bool:
        return compile_glob(pattern, fold=True).matches(path.encode())

    assert m("[Z-a]*", "/x/_q") and m("[Z-a]*", "/x/Az")
    assert m("[A-z]x", "/y/_x") and m("[A-z]x", "/y/QX")
    assert not m("[!A]*", "/y/a") and m("[!A]*", "/y/b")
    assert m("istanbul*", "/x/İstanbul.log") and m("İSTANBUL*", "/x/istanbul.log")
    assert m("*.JPG", "/a/b.jpg") and m("ÉTÉ", "/x/été") and not m("*.jpg", "/a/b.png")


def _ref_match(pat: list[str], path: list[str]) -> bool:
    """Reference glob semantics, by recursion: '**' zero or more names (one or more as the last component),
    any other component by fnmatch on one name (names hold no '/')."""
    import fnmatch
    from functools import lru_cache

    @lru_cache(maxsize=None)
    def go(i: int, j: int) -> bool:
        if i == len(pat):
            return j == len(path)
        if pat[i] == "**":
            if i == len(pat) - 1:
                return j < len(path)
            return go(i + 1, j) or (j < len(path) and go(i, j + 1))
        return j < len(path) and fnmatch.fnmatchcase(path[j], pat[i]) and go(i + 1, j + 1)

    return go(0, 0)


def test_globs_match_as_the_reference_does_with_backtracking_cut():
    """Stars between pieces, and globstars between components, take the first fit and keep it (atomic groups,
    against catastrophic backtracking): the same answers as a plain recursive matcher, on random patterns."""
    import random

    rnd = random.Random(7)
    comps = ["a", "b", "*", "?", "*a*", "a*b", "**", "[ab]*", "*b*a*", "*a*a*", "?*b", "[!a]*a"]
    for _ in range(4000):
        pat = [rnd.choice(comps) for _ in range(rnd.randint(1, 5))]
        path = ["".join(rnd.choice("ab") for _ in range(rnd.randint(1, 6))) for _ in range(rnd.randint(1, 6))]
        got = Glob(("/" + "/".join(pat)).encode()).matches(("/" + "/".join(path)).encode())
        assert got == _ref_match(pat, path), (pat, path)
        if "**" not in pat and len(pat) > 1:  # unanchored with a slash: a trailing run of whole names
            got = Glob("/".join(pat).encode()).matches(("/" + "/".join(path)).encode())
            want = any(_ref_match(pat, path[k:]) for k in range(len(path)))
            assert got == want, (pat, path)


def test_a_many_star_glob_against_a_long_name_does_not_hang():
    """`*a*a*a*a*a*b` against a name of 200 'a's backtracked for hours in one regex (a nightly backup and `find`
    hung on a file anyone can create); `/**/a/**/a/**/a/**/b` likewise over a deep path. Run in a child with a
    time limit, so a regression fails instead of hanging the suite."""
    import subprocess
    import sys

    code = ("from vault.excludes import Glob\n"
            "assert not Glob(b'*a*a*a*a*a*b').matches(b'/x/' + b'a' * 250)\n"
            "assert not Glob(b'/**/a*a*a/**/a/**/a/**/b').matches(b'/' + b'/'.join([b'a' * 40] * 60))\n"
            "assert Glob(b'*a*a*a*a*a*b').matches(b'/x/' + b'a' * 250 + b'b')\n"
            "assert not Glob(b'/x/**a**a**a**a**a**a**b').matches(b'/x/' + b'a' * 200)\n"
            "assert not Glob(b'/' + b'/'.join([b'**x', b'**y'] * 6) + b'/**z').matches(b'/' + b'/'.join([b'x', b'y'] * 100))\n"
            "assert not Glob(b'/x/**a**b').matches(b'/x/' + b'/'.join([b'a' * 250] * 15))\n"
            "assert not Glob('/x/**é**é**é**é**é**?b'.encode()).matches(b'/x/' + 'é'.encode() * 150)\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.parametrize("pattern, path, expected", [
    ("./a/b", b"/x/a/b", True),  # (restic cleans its patterns too: `--exclude ./node_modules` is a habit)
    ("/x/./a", b"/x/a", True),
    ("a/./b", b"/a/b", True),
    ("a/../a/b", b"/q/a/b", True),
    ("/x/a/..", b"/x", True),
    ("/x/a/..", b"/x/a", False),
    ("./x", b"/y/x", True),
    ("/**/../x", b"/x", False),  # (a '..' after '**' takes nothing back: it stays, and names nothing)
])
def test_dot_components_in_a_pattern_are_resolved_lexically(pattern: str, path: bytes, expected: bool) -> None:
    """`./a/b` and `/x/./a` matched nothing (the paths asked about have no '.' components): the files meant to
    be excluded were backed up, exit 0."""
    assert compile_glob(pattern).matches(path, is_dir=True) is expected


@pytest.mark.parametrize("pattern, name, expected", [
    ("?t?.txt", "été.txt", True),  # (bash in a UTF-8 locale and restic: '?' is one character)
    ("[é]t[é].txt", "été.txt", True),
    ("na?ve.txt", "naïve.txt", True),
    ("na[ïi]ve.txt", "naïve.txt", True),
    ("[!é]", "é", False),
    ("[!é]", "x", True),
    ("??", "é", False),  # (one character, two bytes)
    ("*??", "€", False),  # (a star never stops inside a character for a '?' to take the rest)
    ("[à-ü]", "é", True),
    ("[à-ü]", "a", False),
    ("x?", b"x\xff", True),  # (a byte that is no UTF-8 character is one)
    ("x?", b"x\xc3", True),
    ("x??", b"x\xc3\xa9", False),
])
def test_question_mark_and_classes_take_one_character(pattern, name, expected) -> None:
    """`?` and `[...]` matched one byte: `?t?.txt` missed `été.txt`, and `--exclude '[é]t[é].txt'` excluded
    nothing (restic and the shell match one character)."""
    raw = name if isinstance(name, bytes) else name.encode()
    assert compile_glob(pattern).matches(b"/d/" + raw) is expected


def test_character_globs_agree_with_fnmatch_on_utf8_names() -> None:
    import random

    rnd = random.Random(11)
    toks = ["?", "*", "[é]", "[!a]", "a", "é", "€", "[a-é]"]
    for _ in range(3000):
        pat = "".join(rnd.choice(toks) for _ in range(rnd.randint(1, 5)))
        name = "".join(rnd.choice("aé€b") for _ in range(rnd.randint(1, 6)))
        assert compile_glob(pat).matches(b"/d/" + name.encode()) == fnmatch.fnmatchcase(name, pat), (pat, name)


def test_case_folded_classes_take_characters() -> None:
    g = compile_glob("[É]T*", fold=True)
    assert g.matches("/d/été.txt".encode()) and g.matches("/d/ÉTÉ2.txt".encode())


@pytest.mark.parametrize("pattern", [".", "build/..", "\\.", "a/./..", "/x/.."])
def test_a_pattern_whose_dot_components_leave_no_name_is_refused(pattern: str) -> None:
    """Resolved to no component, `build/..` became the root pattern: `restore --include build/..` restored the
    whole snapshot (before '.' and '..' were resolved it matched nothing, with a warning)."""
    with pytest.raises(UsageError):
        compile_glob(pattern)


@pytest.mark.parametrize("pattern, name, expected", [
    ("/x/**??", "中", False),  # (bash: no -- a '**' inside a name never stops inside a character)
    ("/x/**[!中]", "中", False),
    ("/x/**?", "中", True),
    ("/x/**[一-龥]", "a中", True),  # (a range of 20,902 characters: a few byte-range sequences)
    ("/x/*[!Ā-ჿ]x*", "ΩΩΩx", False),
    ("/x/*[!Ā-ჿ]x*", "ΩΩaxΩ", True),
])
def test_wide_classes_and_crossing_stars_take_whole_characters(pattern: str, name: str, expected: bool) -> None:
    assert compile_glob(pattern).matches(b"/x/" + name.encode()) is expected


def test_a_case_folded_range_that_turns_round_matches_nothing_instead_of_failing() -> None:
    """`[Ω-α]` is a range; folded to lower case it reads `[ω-α]`: that was a usage error, exit 2, for a pattern
    the user did not type (restic's matches nothing for the folded range)."""
    g = compile_glob("x[Ω-α]", fold=True)
    assert not g.matches("/d/xβ".encode())
    with pytest.raises(UsageError):  # (an ASCII range reversed as typed stays an error, with -i too)
        compile_glob("[z-a]*", fold=True)


@pytest.mark.parametrize("pattern, name, expected", [
    ("?x", b"\xed\xa0\x80x", False),  # (a surrogate's UTF-8 form is three bytes, not a character: bash, restic)
    ("???x", b"\xed\xa0\x80x", True),
    ("?y", b"\xe0\x80\x80y", False),  # (an overlong form likewise)
    ("???y", b"\xe0\x80\x80y", True),
    ("?", "😀".encode(), True),
])
def test_only_strict_utf8_is_a_character(pattern: str, name: bytes, expected: bool) -> None:
    assert compile_glob(pattern).matches(b"/d/" + name) is expected


def test_a_reversed_range_is_named_by_the_characters_typed() -> None:
    with pytest.raises(UsageError, match="'é'-'z'"):  # (it said '©'-'z': the second byte of é)
        compile_glob("[é-z]x")
