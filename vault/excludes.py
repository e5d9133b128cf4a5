"""Shell-style glob matching on byte paths, for backup excludes, restore include/exclude and ``vault find``.

Paths are absolute, normalized ``bytes`` (``b"/home/a/x.tmp"``: no trailing ``/``, no ``//``, ``.`` or ``..``);
a name may hold any byte but ``/`` and NUL. Patterns given as ``str`` are encoded with :func:`os.fsencode`, so a
non-UTF-8 name that reached us through ``argv`` (surrogate-escaped) still matches its bytes.

Pattern syntax:

* ``*`` any run of bytes except ``/``; ``?`` one character except ``/``.
* ``[abc]``, ``[a-z]``, ``[!a-z]`` (``[^a-z]`` too): one character except ``/``. A ``]`` first in the class is literal;
  ``[:alpha:]``-style ASCII classes work inside brackets. A ``[`` with no closing ``]`` in the same path component
  is a literal ``[``, as in the shell. A character is a whole UTF-8 sequence in a path that is not ASCII (a byte
  that starts none is one character); an ASCII path is matched by a plain byte regex, the same answers faster.
* ``\\x`` matches ``x`` literally (``\\*``, ``\\[``, ``\\#``). A trailing lone ``\\`` is a :class:`UsageError`.
* ``**`` as a whole component matches zero or more directories (``a/**/b`` matches ``a/b`` and ``a/x/y/b``);
  as the last component it matches everything below (``a/**``). Inside a component of a pattern that contains
  ``/`` (``/home/**.tmp``) it matches any bytes including ``/``. In a pattern without ``/`` it is the same as ``*``.

Where a pattern matches:

* without ``/`` (``*.tmp``): the last path component, at any depth;
* starting with ``/`` (``/home/*/cache``): the full path, anchored at the root;
* containing ``/`` elsewhere (``b/*.tmp``): a trailing run of whole components (``/a/b/x.tmp``, not ``/a/cb/x.tmp``).

A trailing ``/`` restricts the pattern to directories (the caller says whether a path is one). Repeated ``/`` in
a pattern count as one. Only the pattern ``/`` matches the root path ``b"/"``.

A pattern compiled with ``fold=True`` (``--iexclude``, ``--iinclude``, ``find -i``, as restic's) ignores case:
every path it is asked about is lower-cased first (Unicode case of UTF-8 names, by each character's simple
mapping, as Go's; the bytes of a name that is not UTF-8 are kept), and so are the pattern's letters as it is
parsed -- a bracket class gets the lower case of its ASCII upper-case members, so ASCII ranges keep their
characters; beyond ASCII the pattern's text is lower-cased before it is parsed, as restic's (a range's ends are
lower-cased; one that turns round, ``[Ω-α]`` read as ``[ω-α]``, matches nothing).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

from vault.errors import UsageError

__all__ = ["Glob", "Matcher", "compile_glob", "read_exclude_file"]

_SLASH = ord("/")

# ASCII character classes usable inside brackets, as in ``[[:digit:]_]``.
_POSIX_CLASSES: dict[bytes, frozenset[int]] = {
    name: frozenset(b for b in range(128) if test(chr(b)))
    for name, test in {
        b"alpha": str.isalpha,
        b"digit": str.isdigit,
        b"alnum": str.isalnum,
        b"upper": str.isupper,
        b"lower": str.islower,
        b"space": str.isspace,
        b"xdigit": lambda c: c in "0123456789abcdefABCDEF",
        b"punct": lambda c: c.isprintable() and not c.isalnum() and not c.isspace(),
        b"print": str.isprintable,
        b"blank": lambda c: c in " \t",
        b"cntrl": lambda c: ord(c) < 32 or ord(c) == 127,
    }.items()
}

# Tokens of one path component: _STAR for an unescaped ``*``, otherwise a regex fragment (bytes).
_STAR = None
_Token = bytes | None


def _bad(pattern: bytes, why: str) -> UsageError:
    return UsageError(f"bad glob pattern {os.fsdecode(pattern)!r}: {why}")


def _byte_set_regex(allowed: set[int]) -> bytes:
    """A regex matching one byte of ``allowed`` (which never holds ``/``), written as \\xHH ranges."""
    if not allowed:
        return b"(?!)"
    runs: list[bytes] = []
    values = sorted(allowed)
    start = prev = values[0]
    for b in values[1:] + [-1]:
        if b == prev + 1:
            prev = b
            continue
        runs.append(b"\\x%02x" % start if start == prev else b"\\x%02x-\\x%02x" % (start, prev))
        start = prev = b
    return b"[" + b"".join(runs) + b"]"


# One character of a name, for paths that are not ASCII: a valid UTF-8 sequence whole (kept: atomic), else one
# byte -- so ``?`` and a bracket class match one character, as the shell's and restic's do (``?t?.txt`` matches
# ``été.txt``), and a name that is not UTF-8 still matches byte by byte.
# (strict UTF-8, RFC 3629: no overlong forms, no surrogates, nothing past U+10FFFF -- such bytes are bytes, as
# for Python's decoder, Go's and bash)
_MB = (b"[\xc2-\xdf][\x80-\xbf]|\xe0[\xa0-\xbf][\x80-\xbf]|[\xe1-\xec\xee\xef][\x80-\xbf]{2}|\xed[\x80-\x9f][\x80-\xbf]"
       b"|\xf0[\x90-\xbf][\x80-\xbf]{2}|[\xf1-\xf3][\x80-\xbf]{3}|\xf4[\x80-\x8f][\x80-\xbf]{2}")
_CHAR = b"(?>" + _MB + b"|[^/])"
_CROSS_CHARS = b"(?:" + _CHAR + b"|/)*"  # a ``**`` inside a component, a character (or a ``/``) at a time
_INVALID = 0x110000  # a byte that starts no UTF-8 character, as a class member: this plus the byte


def _parse_class(pattern: bytes, i: int, fold: bool = False, chars: bool = False) -> tuple[bytes, int] | None:
    """Parse the bracket expression starting at ``pattern[i] == '['``.

    Returns (regex, index after the closing ``]``), or None when there is no closing ``]`` before the next ``/``
    (the caller then takes the ``[`` literally). ``chars``: the regex matches one character (``_CHAR``), its
    members whole UTF-8 characters; else one byte.
    """
    n = len(pattern)
    j = i + 1
    negate = j < n and pattern[j] in b"!^"
    if negate:
        j += 1
    members: set[int] = set()
    wide: list[tuple[int, int]] = []  # ``chars``: ranges of code points beyond ASCII
    first = True
    while True:
        if j >= n or pattern[j] == _SLASH:
            return None
        ch = pattern[j]
        if ch == ord("]") and not first:
            j += 1
            break
        first = False
        if pattern.startswith(b"[:", j):
            end = pattern.find(b":]", j + 2)
            if end != -1 and _SLASH not in pattern[j:end]:
                name = pattern[j + 2 : end]
                if name not in _POSIX_CLASSES:
                    raise _bad(pattern, f"unknown character class [:{os.fsdecode(name)}:]")
                members |= _POSIX_CLASSES[name]
                j = end + 2
                continue
        lo, j = _class_char(pattern, j, chars)
        if lo is None:
            return None
        if j + 1 < n and pattern[j] == ord("-") and pattern[j + 1] != ord("]"):
            hi, j = _class_char(pattern, j + 1, chars)
            if hi is None:
                return None
            if hi < lo and fold and max(lo, hi) >= 128:  # (folded to lower case beyond ASCII, a range may turn
                continue                                   # round: restic's then matches nothing)
            if hi < lo:
                raise _bad(pattern, f"reversed range {_shown(lo)!r}-{_shown(hi)!r}")
            if not chars or hi < 128:
                members.update(range(lo, hi + 1))
            elif lo >= _INVALID and hi >= _INVALID:  # (bytes that are no characters: that run of bytes)
                members.update(range(lo, hi + 1))
            elif lo >= _INVALID or hi >= _INVALID:  # (a byte that is no character at one end: the two only)
                members.update((lo, hi))
            else:
                members.update(range(lo, 128))
                wide.append((max(lo, 128), hi))
        elif chars and 128 <= lo < _INVALID:
            wide.append((lo, lo))
        else:
            members.add(lo)
    if fold:  # (paths are lower-cased: an upper-case member stands for its lower case, before any negation)
        members |= {b + 32 for b in members if 65 <= b <= 90}
    if chars:
        return _char_class_regex(members, wide, negate), j
    if negate:
        members = set(range(256)) - members
    members.discard(_SLASH)
    return _byte_set_regex(members), j


def _char_class_regex(members: set[int], wide: list[tuple[int, int]], negate: bool) -> bytes:
    """One character (``_CHAR``) in the class, or not in it: ``members`` ASCII bytes and bytes that start no
    character (``_INVALID`` + the byte: matched only where no character starts), ``wide`` ranges of code points
    beyond ASCII, each as the few byte-range sequences its UTF-8 encodings take (``_utf8_sequences``: any
    range, ``[一-龥]`` too, without an alternative per character)."""
    ascii_ = {m for m in members if m < 128} - {_SLASH}
    alts = [_byte_set_regex(ascii_)] if ascii_ else []
    alts += [b"(?!" + _MB + b")" + re.escape(bytes([m - _INVALID])) for m in sorted(members) if m >= _INVALID]
    for lo, hi in wide:
        alts += _utf8_sequences(lo, hi)
    any_of = b"(?:" + b"|".join(alts) + b")" if alts else b"(?!)"
    return b"(?!" + any_of + b")" + _CHAR if negate else any_of


def _utf8_sequences(lo: int, hi: int) -> list[bytes]:
    """Regexes, each a sequence of byte ranges, that together match exactly the UTF-8 encodings of the code
    points lo..hi (>= 0x80; surrogates, which have none, left out): the range is split where the encoded length
    changes and where a continuation byte would not span all of 0x80-0xBF (as RE2's and Rust's regex do)."""
    out: list[bytes] = []
    todo = [(lo, hi)]
    while todo:
        lo, hi = todo.pop()
        if lo > hi:
            continue
        if lo <= 0xDFFF and hi >= 0xD800:
            todo += [(lo, 0xD7FF), (0xE000, hi)]
            continue
        cut = next((b for b in (0x7FF, 0xFFFF) if lo <= b < hi), None)
        if cut is not None:
            todo += [(lo, cut), (cut + 1, hi)]
            continue
        for i in (1, 2, 3):
            m = (1 << (6 * i)) - 1
            if lo & ~m != hi & ~m:
                if lo & m:
                    todo += [(lo, lo | m), ((lo | m) + 1, hi)]
                    break
                if hi & m != m:
                    todo += [(lo, (hi & ~m) - 1), (hi & ~m, hi)]
                    break
        else:
            a, b = chr(lo).encode(), chr(hi).encode()
            out.append(b"".join(re.escape(bytes([x])) if x == y else b"[\\x%02x-\\x%02x]" % (x, y)
                                for x, y in zip(a, b)))
    return out


def _shown(c: int) -> str:
    return chr(c) if c < _INVALID else f"\\x{c - _INVALID:02x}"


def _class_char(pattern: bytes, j: int, chars: bool = False) -> tuple[int | None, int]:
    """One (possibly backslash-escaped) byte inside brackets -- ``chars``: one UTF-8 character, as its code point
    (a byte that starts none: 0x110000 + the byte) --; None if the pattern ends or hits ``/`` first."""
    if pattern[j] == ord("\\"):
        j += 1
        if j >= len(pattern) or pattern[j] == _SLASH:
            return None, j
    if pattern[j] == _SLASH:
        return None, j
    if chars and pattern[j] >= 128:
        m = re.match(_CHAR, pattern[j:j + 4])
        piece = m.group() if m else pattern[j:j + 1]
        try:
            return ord(piece.decode()), j + len(piece)
        except UnicodeDecodeError:  # (a UTF-8 form of a surrogate, say: a byte, as the names that hold it)
            return _INVALID + pattern[j], j + 1
    return pattern[j], j + 1


def _tokenize(pattern: bytes, fold: bool = False, chars: bool = False) -> list[list[_Token]]:
    """Split ``pattern`` on unescaped ``/`` into components of tokens (empty components kept); ``fold``: ASCII
    letters stand for their lower case (in classes too: ``[A-z]`` keeps its punctuation, ``[Z-a]`` its order)."""
    components: list[list[_Token]] = [[]]
    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i]
        if ch == ord("\\"):
            if i + 1 >= n:
                raise _bad(pattern, "trailing backslash")
            i += 1
            if pattern[i] == _SLASH:
                components.append([])
            else:
                components[-1].append(_literal(pattern[i : i + 1], fold))
            i += 1
        elif ch == _SLASH:
            components.append([])
            i += 1
        elif ch == ord("*"):
            components[-1].append(_STAR)
            i += 1
        elif ch == ord("?"):
            components[-1].append(_CHAR if chars else b"[^/]")
            i += 1
        elif ch == ord("["):
            parsed = _parse_class(pattern, i, fold, chars)
            if parsed is None:
                components[-1].append(re.escape(b"["))
                i += 1
            else:
                components[-1].append(parsed[0])
                i = parsed[1]
        else:
            components[-1].append(_literal(pattern[i : i + 1], fold))
            i += 1
    return components


def _literal(char: bytes, fold: bool) -> bytes:
    """One pattern byte matched as itself (folded: its lower case, as the paths asked about are)."""
    return re.escape(char.lower() if fold else char)


def _is_globstar(component: list[_Token]) -> bool:
    return len(component) >= 2 and all(t is _STAR for t in component)


def _crossing(component: list[_Token]) -> bool:
    """Whether a component holds a ``**`` inside it (in a pattern with a ``/``: it crosses names)."""
    return any(a is _STAR and b is _STAR for a, b in zip(component, component[1:]))


class Glob:
    """One compiled pattern. Build with :func:`compile_glob`."""

    __slots__ = ("pattern", "dir_only", "anchored", "fold", "_root", "_re", "_below_re", "_prefix", "_wide")

    def __init__(self, pattern: bytes, fold: bool = False) -> None:
        if not pattern:
            raise _bad(pattern, "empty pattern")
        if b"\0" in pattern:
            raise _bad(pattern, "NUL byte")
        self.pattern, self.fold = pattern, fold
        given = _lower(pattern, ascii_too=False) if fold else pattern
        # a path that is not ASCII is matched a character at a time (``_CHAR``): only ``?`` and bracket classes
        # differ (a star, and a literal piece, never meet half a character of valid UTF-8). Compiled first: its
        # errors name the characters the user typed (a byte-wise range `[é-z]` read as `'©'-'z'`)
        self._wide = _compiled(given, fold, chars=True)[3:] if b"?" in given or b"[" in given else None
        self.anchored, self.dir_only, self._root, self._re, self._below_re, self._prefix = _compiled(given, fold)

    def _regexes(self, path: bytes) -> tuple:
        return (self._re, self._below_re, self._prefix) if self._wide is None or path.isascii() else self._wide

    def __repr__(self) -> str:
        return f"Glob({self.pattern!r})"

    def _asked(self, path: bytes) -> bytes:
        """A path this pattern is asked about: absolute, and lower-cased when the pattern ignores case."""
        _check_path(path)
        return _lower(path) if self.fold else path

    def matches(self, path: bytes, is_dir: bool = False) -> bool:
        """True if ``path`` itself matches (a directory-only pattern needs ``is_dir``)."""
        path = self._asked(path)
        if self.dir_only and not is_dir:
            return False
        if path == b"/":
            return self._root
        rx = self._re if self._wide is None or path.isascii() else self._wide[0]  # (inline: per entry backed up)
        return rx.fullmatch(path) is not None

    def matches_ancestor(self, path: bytes) -> bool:
        """True if some proper ancestor directory of ``path`` matches."""
        path = self._asked(path)
        rx = self._below_re if self._wide is None or path.isascii() else self._wide[1]
        return path != b"/" and rx.fullmatch(path) is not None

    def could_match_below(self, dir_path: bytes) -> bool:
        """False only when no path strictly below ``dir_path`` can satisfy :meth:`matches` or
        :meth:`matches_ancestor`. Exact for anchored patterns up to the first ``**``; True otherwise."""
        dir_path = self._asked(dir_path)
        prefixes = self._regexes(dir_path)[2]
        if prefixes is None:
            return True
        names = dir_path.split(b"/")[1:] if dir_path != b"/" else []
        for i, name in enumerate(names):
            if i >= len(prefixes):
                return True  # an ancestor-or-self of dir_path matched the whole pattern
            regex = prefixes[i]
            if regex is None:
                return True
            if regex.fullmatch(name) is None:
                return False
        return True


def _compiled(pattern: bytes, fold: bool, chars: bool = False) -> tuple:
    """(anchored, dir_only, root, full regex, regex of what lies below a match, per-component regexes of an
    anchored pattern to prune walks -- None for a globstar or a crossing ``**`` -- or None)."""
    raw = _tokenize(pattern, fold, chars)
    anchored = not raw[0]
    dir_only = len(raw) > 1 and (not raw[-1] or raw[-1] == _DOT)  # ("x/." names a directory too)
    named = [c for c in raw if c]
    components = _lexical(named)
    if named and not components:  # (no root pattern: `--include build/..` restored the whole snapshot)
        raise _bad(pattern, "its '.' and '..' components leave no name")
    has_slash = anchored or len(components) > 1
    root = not components  # the pattern is just "/"
    # per name, to prune walks (anchored patterns): one name's regex, None for a '**' (a component, or inside one)
    prefix = None if not anchored else tuple(
        None if _crossing(c) else re.compile(_full_regex([c], True, [], chars), re.DOTALL) for c in components)
    full = _full_regex(components, has_slash, [b"/"] if anchored else None, chars)
    return (anchored, dir_only, root, re.compile(full, re.DOTALL),
            re.compile(b"/.+" if root else full + b"/.+", re.DOTALL), prefix)


_DOT, _DOTDOT = [re.escape(b".")], [re.escape(b"."), re.escape(b".")]


def _lexical(components: list[list[_Token]]) -> list[list[_Token]]:
    """Components without ``.``, and ``..`` taking back the name before it (``./a/b``, ``/x/./a``, ``a/../a/b``:
    the paths asked about are normalized, so such a component never matched -- the files a user meant to
    exclude went into the backup, exit 0). A ``..`` with no plain name before it stays (it names nothing)."""
    out: list[list[_Token]] = []
    for c in components:
        if c == _DOT:
            continue
        if c == _DOTDOT and out and out[-1] != _DOTDOT and not _is_globstar(out[-1]):
            out.pop()
            continue
        out.append(c)
    return out


# The stars of a pattern, by what they may skip: within a name ("N", ``*``), across names ("C", ``**`` inside a
# name; "C0", the ``.*/`` that lets a pattern without a leading ``/`` start at any depth), whole directories
# ("G", a ``**`` component; "GL", a last one: everything below). Each as (regex, lazy regex), bytes / chars.
_STARS = {
    "N": ((b"[^/]*", b"[^/]*?"), (b"(?:" + _CHAR + b")*", b"(?:" + _CHAR + b")*?")),
    "C": ((b".*", b".*?"), (_CROSS_CHARS, _CROSS_CHARS + b"?")),
    "C0": ((b".*", b".*?"), (b".*", b".*?")),  # (followed by '/': never inside a character)
    "G": ((b"(?:.*/)?", b"(?:.*?/)??"), (b"(?:.*/)?", b"(?:.*?/)??")),
    "GL": ((b".+", b".+?"), (b".+", b".+?")),
}


def _full_regex(components: list[list[_Token]], has_slash: bool, head: list[bytes] | None, chars: bool) -> bytes:
    """The pattern's regex: its stars and the pieces between them, across components, after ``head`` (``[b"/"]``
    anchored at the root, ``[]`` one name alone, None: at any depth).

    A star takes the leftmost place where the piece after it fits, and keeps it (an atomic group), wherever that
    cannot change the answer -- without it a long name against ``*a*a*a*a*b``, or a deep path against
    ``/**x/**y/**x/**z``, backtracked for hours (a nightly backup hung on a file name anyone can create):
    * a star within a name ("N"): the piece's leftmost fit in that name leaves the most room for the rest (a
      piece holding a ``/`` fits where the name ends, once);
    * any other star, when the next star that is not "N" may skip anything ("C", "G", "GL"): together with the
      "N" pieces up to that star, the leftmost fit (each piece's, in turn) ends first, and that star absorbs
      whatever a later fit would have skipped. Not before the end, and not before an "N" star alone (``**a*b``:
      the leftmost ``a`` may be in a name with no ``b`` after it)."""
    seq: list[list] = []  # [star kind, piece tokens]
    if head is None:
        head, seq = [], [["C0", [b"/"]]]
    cur = seq[-1][1] if seq else head
    for idx, comp in enumerate(components):
        last = idx == len(components) - 1
        if has_slash and _is_globstar(comp):
            if not last and seq and seq[-1][0] == "G" and not seq[-1][1]:
                continue  # "**/**/" is the same as "**/"
            seq.append(["GL" if last else "G", []])
            cur = seq[-1][1]
            continue
        k = 0
        while k < len(comp):
            if comp[k] is _STAR:
                run = 1
                while k + run < len(comp) and comp[k + run] is _STAR:
                    run += 1
                seq.append(["C" if run >= 2 and has_slash else "N", []])
                cur = seq[-1][1]
                k += run
            else:
                cur.append(comp[k])
                k += 1
        if not last:
            cur.append(b"/")
    mode = 1 if chars else 0

    def plain(i: int) -> bytes:
        return _STARS[seq[i][0]][mode][0] + b"".join(seq[i][1])

    def leftmost(i: int) -> bytes:
        return b"(?>" + _STARS[seq[i][0]][mode][1] + b"".join(seq[i][1]) + b")"

    out = [b"".join(head)]
    i = 0
    while i < len(seq):
        last = i == len(seq) - 1
        if seq[i][0] == "N":
            out.append(plain(i) if last or not seq[i][1] else leftmost(i))
            i += 1
            continue
        j = i + 1
        while j < len(seq) and seq[j][0] == "N":
            j += 1
        # another star that may skip anything comes (not just a last '**', which one backtrack serves as well, and
        # Python's engine runs a plain '.*/' faster): the run takes its first fit
        if j < len(seq) and not (j == len(seq) - 1 and seq[j][0] == "GL"):
            out.append(b"(?>" + _STARS[seq[i][0]][mode][1] + b"".join(seq[i][1])
                       + b"".join(leftmost(k) if seq[k][1] else plain(k) for k in range(i + 1, j)) + b")")
            i = j
        else:
            out.append(plain(i))
            i += 1
    return b"".join(out)


def _lower(path: bytes, ascii_too: bool = True) -> bytes:
    """``path`` in lower case: ASCII at C speed; else as text (UTF-8; a byte that is not stays as it is), each
    character by its simple mapping, as restic's (Go's) -- ``İ`` is ``i``, not ``i`` and a combining dot.
    ``ascii_too=False``: only the characters beyond ASCII (a pattern's ASCII is folded as it is tokenized)."""
    if path.isascii():
        return path.lower() if ascii_too else path
    text = path.decode("utf-8", "surrogateescape")
    return "".join(c if c.isascii() and not ascii_too else c.lower()[:1] for c in text).encode(
        "utf-8", "surrogateescape")


def _check_path(path: bytes) -> None:
    if path[:1] != b"/":
        raise ValueError(f"expected an absolute bytes path, got {path!r}")


def compile_glob(pattern: str | bytes, fold: bool = False) -> Glob:
    """Compile one shell-style pattern (see the module docstring; ``fold``: case ignored). Raises UsageError if
    malformed."""
    return Glob(os.fsencode(pattern) if isinstance(pattern, str) else bytes(pattern), fold)


class Matcher:
    """A set of patterns; a path matches if any pattern does. An empty Matcher matches nothing."""

    __slots__ = ("globs",)

    def __init__(self, patterns: Iterable[str | bytes | Glob] = ()) -> None:
        self.globs: tuple[Glob, ...] = tuple(p if isinstance(p, Glob) else compile_glob(p) for p in patterns)

    def __bool__(self) -> bool:
        return bool(self.globs)

    def __repr__(self) -> str:
        return f"Matcher({[g.pattern for g in self.globs]!r})"

    def _asked(self, path: bytes) -> bytes:
        """A path this pattern is asked about: absolute, and lower-cased when the pattern ignores case."""
        _check_path(path)
        return _lower(path) if self.fold else path

    def matches(self, path: bytes, is_dir: bool = False) -> bool:
        """True if any pattern matches ``path`` itself."""
        return any(g.matches(path, is_dir) for g in self.globs)

    def matches_or_parent(self, path: bytes, is_dir: bool = False) -> bool:
        """True if any pattern matches ``path`` or one of its ancestor directories.

        Excludes use this (an excluded directory excludes everything below it), and so does restore
        ``--include`` (a file is included if it or an ancestor matches).
        """
        return any(g.matches(path, is_dir) or g.matches_ancestor(path) for g in self.globs)

    def could_match_below(self, dir_path: bytes) -> bool:
        """Conservative pruning test for walks: False only when no path strictly below ``dir_path`` can satisfy
        :meth:`matches_or_parent`. Always True for patterns not starting with ``/``."""
        return any(g.could_match_below(dir_path) for g in self.globs)


def read_exclude_file(text: str) -> list[str]:
    """Patterns from an exclude file: one per line; blank lines and lines starting with ``#`` are skipped.

    Each line is trimmed of surrounding whitespace, as restic's (an indented pattern or comment silently matched
    nothing), and a UTF-8 byte order mark (Notepad's) is dropped. ``\\#`` starts a pattern with a literal
    ``#``; ``\\ `` keeps an escaped space, leading or trailing.
    """
    patterns: list[str] = []
    for line in text.removeprefix("\ufeff").splitlines():
        line = line.lstrip()
        stripped = line.rstrip()
        if not stripped or stripped.startswith("#"):
            continue
        backslashes = len(stripped) - len(stripped.rstrip("\\"))
        if backslashes % 2 == 1 and len(stripped) < len(line):
            stripped = line[: len(stripped) + 1]  # "foo\ " keeps its escaped space
        patterns.append(stripped)
    return patterns
