"""Patterns an attacker may write (MAINTAINERS N: regexes, F:/X: globs), matched in time linear in the text.

Python's `re` backtracks: `(a+)+$` or `a*a*a*a*b` takes exponential or high-polynomial time, and a
MAINTAINERS file is read from a base that may be a fork's branch. So these patterns are parsed here
into a Thompson NFA and run as sets of states (no backtracking): the work is at most the program's
size per character of text. Only a regex subset is accepted; anything else is refused by name,
never guessed at.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

MAX_PATTERN = 256  # characters; the kernel's longest N: is 16
MAX_PROGRAM = 2048  # instructions after `{m,n}` is expanded
MAX_NESTING = 32  # groups inside groups: bounds the parser's recursion
MAX_REPEAT = 100  # the largest m or n in `{m,n}`
_MEMO_CAP = 4096  # cached (states, char) steps per pattern, a lazy DFA that forgets when full


class PatternError(ValueError):
    """A pattern outside the accepted subset, or over a bound; says what and at which offset."""


@dataclass(frozen=True)
class CharSet:
    """One character position: listed characters and ranges, optionally negated."""

    chars: frozenset[str] = frozenset()
    ranges: tuple[tuple[str, str], ...] = ()
    negated: bool = False

    def matches(self, char: str) -> bool:
        inside = char in self.chars or any(low <= char <= high for low, high in self.ranges)
        return inside != self.negated


ANY = CharSet(negated=True)
NOT_SLASH = CharSet(frozenset("/"), negated=True)
_DIGIT = CharSet(ranges=(("0", "9"),))
_WORD = CharSet(frozenset("_"), (("a", "z"), ("A", "Z"), ("0", "9")))
_SPACE = CharSet(frozenset(" \t\n\r\f\v"))
_CLASS_ESCAPES = {"d": _DIGIT, "w": _WORD, "s": _SPACE}
_CHAR_ESCAPES = {"t": "\t", "n": "\n", "r": "\r", "f": "\f", "v": "\v", "e": "\x1b", "a": "\x07"}

# Instructions: ("char", CharSet) | ("split", a, b) | ("jmp", a) | ("bol",) | ("eol",) | ("match",)
Instruction = tuple[object, ...]
# The syntax tree the parser builds: ("set", CharSet) | ("cat", [..]) | ("alt", [..]) | ("rep", node, lo, hi) | ("bol",)
Node = tuple[object, ...]


@dataclass(frozen=True)
class LinearPattern:
    """A compiled pattern: `search` (anywhere in the text) and `fullmatch`, both linear in the text."""

    source: str
    program: tuple[Instruction, ...]
    _memo: dict[tuple[frozenset[int], str, bool, bool], frozenset[int]] = field(
        default_factory=dict, compare=False, repr=False
    )
    _closures: dict[tuple[int, bool, bool], frozenset[int]] = field(default_factory=dict, compare=False, repr=False)

    def search(self, text: str) -> bool:
        return self._run(text, anywhere=True)

    def fullmatch(self, text: str) -> bool:
        return self._run(text, anywhere=False)

    def _run(self, text: str, *, anywhere: bool) -> bool:
        match_pc = len(self.program) - 1
        states = self._closure((0,), at_start=True, at_end=not text)
        if anywhere and match_pc in states:
            return True
        for position, char in enumerate(text):
            last = position == len(text) - 1
            states = self._step(states, char, last, anywhere)
            if anywhere and match_pc in states:
                return True
            if not states and not anywhere:
                return False
        return match_pc in states

    def _step(self, states: frozenset[int], char: str, last: bool, anywhere: bool) -> frozenset[int]:
        key = (states, char, last, anywhere)
        cached = self._memo.get(key)
        if cached is not None:
            return cached
        moved = [pc + 1 for pc in states if self.program[pc][0] == "char" and _charset(self.program[pc]).matches(char)]
        result = self._closure(moved, at_start=False, at_end=last)
        if anywhere:  # a search may also start a match at the next character
            result |= self._closure((0,), at_start=False, at_end=last)
        if len(self._memo) >= _MEMO_CAP:
            self._memo.clear()
        self._memo[key] = result
        return result

    def _closure(self, pcs: Iterable[int], *, at_start: bool, at_end: bool) -> frozenset[int]:
        found: frozenset[int] = frozenset()
        for pc in pcs:
            key = (pc, at_start, at_end)
            closure = self._closures.get(key)
            if closure is None:
                closure = self._closures[key] = self._closure_of(pc, at_start, at_end)
            found |= closure
        return found

    def _closure_of(self, start: int, at_start: bool, at_end: bool) -> frozenset[int]:
        """The char and match instructions reachable from `start` without reading a character.

        Kept per instruction, so each is walked once per pattern; the visited set makes `(a*)*` finite.
        """
        seen: set[int] = set()
        found: set[int] = set()
        stack = [start]
        while stack:
            pc = stack.pop()
            if pc in seen:
                continue
            seen.add(pc)
            op = self.program[pc]
            kind = op[0]
            if kind in ("char", "match"):
                found.add(pc)
            elif kind == "jmp":
                stack.append(_target(op[1]))
            elif kind == "split":
                stack += [_target(op[1]), _target(op[2])]
            elif (kind == "bol" and at_start) or (kind == "eol" and at_end):
                stack.append(pc + 1)
        return frozenset(found)


def _target(value: object) -> int:
    assert isinstance(value, int)
    return value


def _charset(op: Instruction) -> CharSet:
    charset = op[1]
    assert isinstance(charset, CharSet)
    return charset


def compile_regex(pattern: str, *, extended: bool = False) -> LinearPattern:
    """A regex of the subset: literals, `.`, classes, `\\d\\w\\s` (and negations), groups, `(?:`, `|`,
    `* + ? {m,n}` (a lazy `?` after them is accepted: it changes no match), `^`, `$`.

    `extended` is Perl's /x, which get_maintainer.pl uses for N: (whitespace outside a class ignored,
    `#` starts a comment). Raises PatternError for anything else: backreferences, lookaround, `\\b`.
    """
    return _compile(pattern, _RegexParser(pattern, extended).parse())


def compile_glob(pattern: str, *, crossing: bool) -> LinearPattern:
    """A MAINTAINERS F:/X: glob for `fullmatch`: `*` any run, `?` one character, `[...]` a class.

    With `crossing` false `*` and `?` never match "/" (a segment); true, they do, as get_maintainer.pl's
    `.*` does in a directory pattern ("drivers/*/qcom/" matches "drivers/a/b/qcom/x.c").
    """
    if len(pattern) > MAX_PATTERN:
        raise PatternError(f"pattern is {len(pattern)} characters, over the cap of {MAX_PATTERN}")
    wildcard = ANY if crossing else NOT_SLASH
    nodes: list[Node] = []
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if char == "*":
            nodes.append(("rep", ("set", wildcard), 0, None))
        elif char == "?":
            nodes.append(("set", wildcard))
        elif char == "[" and (parsed := _glob_class(pattern, index)) is not None:
            charset, index = parsed
            nodes.append(("set", charset))
            continue
        elif char == "\\" and index + 1 < len(pattern):
            index += 1
            nodes.append(("set", CharSet(frozenset(pattern[index]))))
        else:
            nodes.append(("set", CharSet(frozenset(char))))
        index += 1
    return _compile(pattern, ("cat", nodes))


def _glob_class(pattern: str, start: int) -> tuple[CharSet, int] | None:
    """`[ch]`, `[0-9]`, `[!x]` or `[^x]` at `start`; None when it never closes (then `[` is literal)."""
    index = start + 1
    negated = index < len(pattern) and pattern[index] in "!^"
    index += negated
    chars: set[str] = set()
    ranges: list[tuple[str, str]] = []
    first = True
    while index < len(pattern) and (pattern[index] != "]" or first):
        first = False
        if index + 2 < len(pattern) and pattern[index + 1] == "-" and pattern[index + 2] != "]":
            ranges.append((pattern[index], pattern[index + 2]))
            index += 3
        else:
            chars.add(pattern[index])
            index += 1
    if index >= len(pattern):
        return None
    return CharSet(frozenset(chars), tuple(ranges), negated), index + 1


class _RegexParser:
    """Recursive descent over the subset, depth bounded by MAX_NESTING."""

    def __init__(self, pattern: str, extended: bool) -> None:
        if len(pattern) > MAX_PATTERN:
            raise PatternError(f"pattern is {len(pattern)} characters, over the cap of {MAX_PATTERN}")
        self.text = pattern
        self.extended = extended
        self.index = 0
        self.depth = 0

    def fail(self, what: str) -> PatternError:
        return PatternError(f"{what} at offset {self.index}")

    def peek(self) -> str | None:
        self.skip_extended_space()
        return self.text[self.index] if self.index < len(self.text) else None

    def skip_extended_space(self) -> None:
        while self.extended and self.index < len(self.text):
            char = self.text[self.index]
            if char == "#":
                self.index = len(self.text)
            elif char.isspace():
                self.index += 1
            else:
                return

    def parse(self) -> Node:
        node = self.alternation()
        if self.peek() is not None:
            raise self.fail(f"unbalanced {self.text[self.index]!r}")
        return node

    def alternation(self) -> Node:
        branches = [self.concatenation()]
        while self.peek() == "|":
            self.index += 1
            branches.append(self.concatenation())
        return branches[0] if len(branches) == 1 else ("alt", branches)

    def concatenation(self) -> Node:
        items: list[Node] = []
        while (char := self.peek()) is not None and char not in "|)":
            items.append(self.repetition())
        return ("cat", items)

    def repetition(self) -> Node:
        node = self.atom()
        char = self.peek()
        if char is None or char not in "*+?{":
            return node
        bounds = self.quantifier()
        if bounds is None:
            return node  # a "{" that is no quantifier is a literal, as in Perl
        if node[0] in ("bol", "eol"):
            raise self.fail("a quantifier on an anchor")
        if self.peek() == "?":
            self.index += 1  # lazy: the same set of matches
        elif self.peek() == "+":
            raise self.fail("possessive quantifiers are not supported")
        if self.peek() == "{" and self.quantifier() is not None:
            raise self.fail("nested quantifiers")
        # A second "*", "+" or "?" reads as an atom, and fails there ("nothing to repeat") as in Perl.
        return ("rep", node, *bounds)

    def quantifier(self) -> tuple[int, int | None] | None:
        char = self.text[self.index]
        if char != "{":
            self.index += 1
            return {"*": (0, None), "+": (1, None), "?": (0, 1)}[char]
        close = self.text.find("}", self.index, self.index + 16)
        body = self.text[self.index + 1 : close] if close > 0 else ""
        low_text, comma, high_text = body.partition(",")
        if not low_text.isdigit() or not (high_text == "" or high_text.isdigit()):
            return None
        if len(low_text) > 3 or len(high_text) > 3 or int(low_text) > MAX_REPEAT or int(high_text or 0) > MAX_REPEAT:
            raise self.fail(f"repetition {{{body}}} is over the cap of {MAX_REPEAT}")
        low = int(low_text)
        high = None if comma and not high_text else int(high_text) if comma else low
        if high is not None and high < low:
            raise self.fail(f"repetition {{{body}}} has its bounds reversed")
        self.index = close + 1
        return low, high

    def atom(self) -> Node:
        char = self.text[self.index]
        self.index += 1
        if char == "(":
            return self.group()
        if char == "[":
            return ("set", self.char_class())
        if char == ".":
            return ("set", CharSet(frozenset("\n"), negated=True))
        if char == "^":
            return ("bol",)
        if char == "$":
            return ("eol",)
        if char == "\\":
            return ("set", self.escape(in_class=False))
        if char in "*+?":
            raise self.fail(f"nothing to repeat before {char!r}")
        return ("set", CharSet(frozenset(char)))

    def group(self) -> Node:
        if self.text.startswith("?", self.index):
            if not self.text.startswith("?:", self.index):
                raise self.fail("only (?: ) groups are supported (no lookaround, flags or names)")
            self.index += 2
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise self.fail(f"groups nested deeper than {MAX_NESTING}")
        node = self.alternation()
        self.depth -= 1
        if self.peek() != ")":
            raise self.fail("a group that never closes")
        self.index += 1
        return node

    def char_class(self) -> CharSet:
        negated = self.text.startswith("^", self.index)
        self.index += negated
        chars: set[str] = set()
        ranges: list[tuple[str, str]] = []
        first = True
        while True:
            if self.index >= len(self.text):
                raise self.fail("a character class that never closes")
            char = self.text[self.index]
            self.index += 1
            if char == "]" and not first:
                return CharSet(frozenset(chars), tuple(ranges), negated)
            first = False
            if char == "\\":
                escaped = self.escape(in_class=True)
                if escaped.ranges or escaped.negated or len(escaped.chars) != 1:
                    if escaped.negated:
                        raise self.fail("a negated class escape inside a class")
                    chars |= escaped.chars
                    ranges += escaped.ranges
                    continue
                char = next(iter(escaped.chars))
            if (
                self.text.startswith("-", self.index)
                and self.index + 1 < len(self.text)
                and self.text[self.index + 1] not in "]\\"
            ):
                high = self.text[self.index + 1]
                if high < char:
                    raise self.fail(f"range {char}-{high} is reversed")
                ranges.append((char, high))
                self.index += 2
            else:
                chars.add(char)

    def escape(self, *, in_class: bool) -> CharSet:
        if self.index >= len(self.text):
            raise self.fail("a trailing backslash")
        char = self.text[self.index]
        self.index += 1
        if char.lower() in _CLASS_ESCAPES:
            base = _CLASS_ESCAPES[char.lower()]
            return CharSet(base.chars, base.ranges, negated=char.isupper())
        if char in _CHAR_ESCAPES:
            return CharSet(frozenset(_CHAR_ESCAPES[char]))
        if char.isascii() and char.isalnum():
            raise self.fail(f"escape \\{char} is not supported")
        return CharSet(frozenset(char))


def _compile(source: str, tree: Node) -> LinearPattern:
    code: list[Instruction] = []
    _emit(tree, code)
    code.append(("match",))
    return LinearPattern(source, tuple(code))


def _emit(node: Node, code: list[Instruction]) -> None:
    if len(code) > MAX_PROGRAM:
        raise PatternError(f"pattern compiles to more than {MAX_PROGRAM} instructions")
    kind = node[0]
    if kind == "set":
        code.append(("char", node[1]))
    elif kind in ("bol", "eol"):
        code.append((kind,))
    elif kind == "cat":
        for item in _nodes(node[1]):
            _emit(item, code)
    elif kind == "alt":
        _emit_alternation(_nodes(node[1]), code)
    elif kind == "rep":
        _emit_repetition(node, code)


def _nodes(value: object) -> list[Node]:
    assert isinstance(value, list)
    return value


def _emit_alternation(branches: list[Node], code: list[Instruction]) -> None:
    jumps: list[int] = []
    for branch in branches[:-1]:
        split = _placeholder(code)
        _emit(branch, code)
        jumps.append(_placeholder(code))
        code[split] = ("split", split + 1, len(code))
    _emit(branches[-1], code)
    for jump in jumps:
        code[jump] = ("jmp", len(code))


def _emit_repetition(node: Node, code: list[Instruction]) -> None:
    _, body, low, high = node
    assert isinstance(body, tuple) and isinstance(low, int) and (high is None or isinstance(high, int))
    for _ in range(low):
        _emit(body, code)
    if high is None:
        loop = _placeholder(code)
        _emit(body, code)
        code.append(("jmp", loop))
        code[loop] = ("split", loop + 1, len(code))
        return
    optional: list[int] = []
    for _ in range(high - low):
        optional.append(_placeholder(code))
        _emit(body, code)
    for split in optional:
        code[split] = ("split", split + 1, len(code))


def _placeholder(code: list[Instruction]) -> int:
    code.append(("jmp", -1))
    return len(code) - 1
