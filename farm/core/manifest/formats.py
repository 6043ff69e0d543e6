"""Reading the four manifest formats into raw items, before any item is validated.

YAML and JSON hold a whole job (a mapping with `version: 1` and `items`); JSONL holds one item
per line and CSV one per row. `detect_format` names the format from the file's extension.

Hostile input is expected: the bytes must be UTF-8; YAML anchors and aliases (the 'billion
laughs' bomb) and nesting deeper than `MAX_NESTING_DEPTH` are refused; repeated keys (which
YAML and JSON would silently resolve to the last one), NaN and infinite numbers (1e400) and lone
surrogates are found with their paths by one walk of the document (`_scan`) and reported as
errors of the field that holds them. A problem inside one item rejects only that item.
"""

from __future__ import annotations

import bisect
import csv
import functools
import io
import json
import json.scanner
import math
import re
import sys
from pathlib import Path
from typing import Any, Callable, Literal

from farm.core.errors import ManifestError, ManifestIssue, excerpt
from farm.core.manifest.items import ItemIssues, _unknown_field_message
from farm.core.manifest.spec import ITEM_FIELDS, ITEM_HELP

MAX_NESTING_DEPTH = 32

FORMATS = {
    ".yaml": "yaml",
    ".yml": "yaml",
    ".json": "json",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
}
Format = Literal["yaml", "json", "jsonl", "csv"]


def detect_format(path: Path) -> Format:
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        known = ", ".join(sorted(FORMATS))
        raise ManifestError(
            [ManifestIssue(f"unknown manifest extension {excerpt(suffix or '(none)', 20)}; use one of {known}")],
            source=str(path),
        )
    return FORMATS[suffix]  # type: ignore[return-value]


def item_rows(text: str, fmt: Format) -> list[dict]:
    """The raw items of a JSONL or CSV manifest (to send them on as a JSON manifest)."""
    if fmt == "jsonl":
        items, _, item_issues = _load_jsonl(text)
        issues: list[ManifestIssue] = []
    else:
        items, _, issues, item_issues = _load_csv(text)
    problems = issues + [issue for _, group in sorted(item_issues.items()) for issue in group]
    if problems:
        raise ManifestError(problems)
    return items


def _decode(data: bytes | str, source: str | None) -> str:
    if isinstance(data, str):
        return data
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ManifestError(
            [ManifestIssue(f"not valid UTF-8 (byte {exc.start}); save the manifest as UTF-8", line=line)],
            source,
        ) from None


def _load_document(text: str, fmt: str, source: str | None) -> tuple[Any, list[ManifestIssue], ItemIssues]:
    """Parse a YAML or JSON document and walk it once. Returns the document, the problems outside
    the items (fatal) and those inside each item (they reject only their item)."""
    try:
        document, duplicates = _load_json(text) if fmt == "json" else _load_yaml(text)
    except RecursionError:
        raise ManifestError([ManifestIssue("the document is nested too deeply; flatten it")], source) from None
    except json.JSONDecodeError as exc:
        raise ManifestError(
            [ManifestIssue(f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}", line=exc.lineno)],
            source,
        ) from None
    except UnicodeEncodeError as exc:  # the C YAML parser, given text with a lone surrogate
        line = text.count("\n", 0, exc.start) + 1
        issue = ManifestIssue(_SURROGATE_TEXT.format(where=f"at line {line}"), line=line)
        raise ManifestError([issue], source) from None
    except Exception as exc:  # yaml.YAMLError and its subclasses; ValueError for a number too long to convert
        raise ManifestError([_document_error(text, fmt, exc)], source) from None
    fatal, found = _scan(document, duplicates)
    if fatal:
        raise ManifestError([ManifestIssue(fatal)], source)
    if not isinstance(document, dict):
        kind = type(document).__name__ if document is not None else "empty"
        raise ManifestError(
            [ManifestIssue(f"the top level is {kind}; it must be a mapping with `version: 1` and `items`")],
            source,
        )
    issues: list[ManifestIssue] = []
    item_issues: dict[int, list[ManifestIssue]] = {}
    items_are_a_list = isinstance(document.get("items"), list)
    for problem in found:
        path = problem[0]
        if items_are_a_list and len(path) >= 2 and path[0] == "items" and type(path[1]) is int:
            if len(path) > 2:  # a bad item as a whole (`- .nan`) is reported as "not a mapping"
                item_issues.setdefault(path[1], []).append(_found_issue(problem, path[2:], item_index=path[1]))
        else:
            issues.append(_found_issue(problem, path))
    return document, issues, item_issues


def _document_error(text: str, fmt: str, exc: Exception) -> ManifestIssue:
    long_number = _LONG_NUMBER.search(text) if isinstance(exc, ValueError) else None
    if long_number:
        line = text.count("\n", 0, long_number.start()) + 1
        return ManifestIssue(_long_number_message(len(long_number.group())), line=line)
    if fmt == "json":
        return ManifestIssue(f"invalid JSON: {excerpt(str(exc), 200)}")
    mark = getattr(exc, "problem_mark", None)
    line = mark.line + 1 if mark is not None else None
    problem = getattr(exc, "problem", None) or str(exc)
    where = f" at line {line} column {mark.column + 1}" if mark is not None else ""
    return ManifestIssue(f"invalid YAML{where}: {problem[:200]}", line=line)


def _long_number_message(digits: int) -> str:
    return f"a number has {digits} digits, more than can be read; use a number within the field's range"


# Python refuses to convert integers longer than this (a guard against quadratic conversions).
_LONG_NUMBER = re.compile(r"\d{%d,}" % (sys.get_int_max_str_digits() + 1))
_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_TEXT = (
    "the text contains a lone surrogate {where}, which is not valid Unicode; "
    "fix the \\u escape or save the manifest as UTF-8"
)


@functools.cache
def _yaml_loader() -> type:
    """The C safe loader when PyYAML has it, noting repeated keys with their lines (YAML itself
    keeps the last value silently)."""
    import yaml

    base = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

    class StrictLoader(base):  # type: ignore[misc, valid-type]
        def __init__(self, stream: str):
            super().__init__(stream)
            self.duplicates: dict[int, tuple[dict, list[tuple[Any, list[int | None]]]]] = {}

        def construct_yaml_map(self, node):  # noqa: ANN001 - PyYAML's protocol
            data: dict = {}
            yield data
            explicit = node.value  # merge keys (<<) are removed from this list in place, then prepended
            value = self.construct_mapping(node)
            data.update(value)
            if len(value) < len(explicit) or node.value is not explicit:
                repeated = self._repeated(explicit)
                if repeated:  # keep the mapping referenced: its id stays unique until the walk
                    self.duplicates[id(data)] = (data, repeated)

        def _repeated(self, pairs: list) -> list[tuple[Any, list[int | None]]]:
            lines: dict[Any, list[int | None]] = {}
            for key_node, _ in pairs:
                key = self.construct_object(key_node)  # already built: taken from the cache
                try:
                    lines.setdefault(key, []).append(key_node.start_mark.line + 1)
                except TypeError:  # unhashable; construct_mapping has refused it already
                    continue
            return [(key, found) for key, found in lines.items() if len(found) > 1]

    StrictLoader.add_constructor("tag:yaml.org,2002:map", StrictLoader.construct_yaml_map)
    return StrictLoader


def _load_yaml(text: str) -> tuple[Any, dict]:
    loader = _yaml_loader()(text)
    try:
        return loader.get_single_data(), loader.duplicates
    finally:
        loader.dispose()


def _pairs_hook(duplicates: dict) -> Callable[[list], dict]:
    """json's object_pairs_hook: builds each object as json would, and notes repeated keys (the
    parser stays the C one; the lines are found later, only when a key did repeat)."""

    def mapping_of(pairs: list) -> dict:
        mapping = dict(pairs)
        if len(mapping) < len(pairs):
            counts: dict[str, int] = {}
            for key, _ in pairs:
                counts[key] = counts.get(key, 0) + 1
            duplicates[id(mapping)] = (mapping, [(k, [None] * n) for k, n in counts.items() if n > 1])
        return mapping

    return mapping_of


def _load_json(text: str) -> tuple[Any, dict]:
    duplicates: dict = {}
    document = json.loads(text, object_pairs_hook=_pairs_hook(duplicates))
    if duplicates:
        return _json_with_key_lines(text)
    return document, duplicates


def _json_with_key_lines(text: str) -> tuple[Any, dict]:
    """Parse again with json's pure-Python scanner, noting where each key starts, to say on which
    lines a key repeats. Slower than the C parser: only done when a key did repeat."""
    duplicates: dict = {}
    newlines: list[int] = []
    whitespace = json.decoder.WHITESPACE.match
    scanstring = json.decoder.scanstring
    error = json.JSONDecodeError

    def line_of(position: int) -> int:
        if not newlines:
            newlines.extend(m.start() for m in re.finditer("\n", text))
            newlines.append(len(text))
        return bisect.bisect_left(newlines, position) + 1

    def parse_object(s_and_end, strict, scan_once, object_hook, object_pairs_hook, memo=None):  # noqa: ANN001
        s, end = s_and_end
        pairs: list[tuple[str, Any]] = []
        starts: list[int] = []
        end = whitespace(s, end).end()
        if s[end : end + 1] == "}":
            return {}, end + 1
        while True:
            if s[end : end + 1] != '"':
                raise error("Expecting property name enclosed in double quotes", s, end)
            starts.append(end)
            key, end = scanstring(s, end + 1, strict)
            end = whitespace(s, end).end()
            if s[end : end + 1] != ":":
                raise error("Expecting ':' delimiter", s, end)
            end = whitespace(s, end + 1).end()
            try:
                value, end = scan_once(s, end)
            except StopIteration as stop:
                raise error("Expecting value", s, stop.value) from None
            pairs.append((key, value))
            end = whitespace(s, end).end()
            delimiter = s[end : end + 1]
            end += 1
            if delimiter == "}":
                break
            if delimiter != ",":
                raise error("Expecting ',' delimiter", s, end - 1)
            end = whitespace(s, end).end()
        mapping = dict(pairs)
        if len(mapping) < len(pairs):
            where: dict[str, list[int]] = {}
            for (key, _), start in zip(pairs, starts):
                where.setdefault(key, []).append(start)
            repeated = [(k, [line_of(p) for p in found]) for k, found in where.items() if len(found) > 1]
            duplicates[id(mapping)] = (mapping, repeated)
        return mapping, end

    decoder = json.JSONDecoder()
    decoder.parse_object = parse_object  # type: ignore[assignment]
    decoder.scan_once = json.scanner.py_make_scanner(decoder)
    return decoder.decode(text), duplicates


_CONTAINERS = (dict, list, tuple, set, frozenset)  # tuples and sets: YAML's !!omap, !!pairs, !!set
_NESTING = f"the document is nested more than {MAX_NESTING_DEPTH} levels deep; flatten it"
_ALIASES = "YAML anchors and aliases (&name / *name) are not allowed in manifests; write values out"


def _scan(document: Any, duplicates: dict | None) -> tuple[str | None, list[tuple]]:
    """One walk of a loaded document, every node once, with an explicit stack (no recursion).

    Refuses (the first string) shared nodes, which YAML aliases make (the 'billion laughs' bomb),
    and absurd nesting. Finds, with their paths, what must not pass on: NaN and infinite numbers,
    lone surrogates in keys and strings (not valid Unicode: they cannot be written as UTF-8), and
    the repeated keys the parser noted in `duplicates`. Each finding is (path, kind, value, lines).
    """
    seen: set[int] = set()
    found: list[tuple] = []
    stack: list[tuple[Any, int, tuple]] = [(document, 0, ())]
    while stack:
        node, depth, path = stack.pop()
        if not isinstance(node, _CONTAINERS):
            continue
        if depth > MAX_NESTING_DEPTH:
            return _NESTING, found
        if id(node) in seen:
            return _ALIASES, found
        seen.add(id(node))
        if isinstance(node, dict):
            if duplicates and id(node) in duplicates:
                found.extend((path + (key,), "duplicate", key, lines) for key, lines in duplicates[id(node)][1])
            children: Any = node.items()
        elif isinstance(node, (list, tuple)):
            children = enumerate(node)
        else:
            children = (("?", child) for child in node)
        nested = []
        for key, child in children:
            if type(key) is str and not key.isascii() and _SURROGATE.search(key):
                found.append((path + (key,), "surrogate key", key, None))
            kind = type(child)
            if kind is str:
                if not child.isascii() and _SURROGATE.search(child):
                    found.append((path + (key,), "surrogate", child, None))
            elif kind is float:
                if not math.isfinite(child):
                    found.append((path + (key,), "not finite", child, None))
            elif isinstance(child, _CONTAINERS):
                nested.append((child, depth + 1, path + (key,)))
        stack.extend(reversed(nested))  # depth first, in document order
    return None, found


def _plain(item: Any) -> bool:
    """Whether an item needs no walk: a flat mapping of ASCII keys and text, and finite numbers
    (most JSONL lines and every CSV row; checking this is twice as fast as the walk)."""
    if type(item) is not dict:
        return False
    for key, value in item.items():
        kind = type(value)
        if type(key) is not str or not key.isascii():
            return False
        if kind is str:
            if not value.isascii():
                return False
        elif kind is float:
            if not math.isfinite(value):
                return False
        elif kind is not int and kind is not bool and value is not None:
            return False
    return True


def _found_issue(
    problem: tuple, path: tuple, *, item_index: int | None = None, line: int | None = None
) -> ManifestIssue:
    """The issue for one finding of `_scan`; `path` is relative to the item when in one."""
    _, kind, value, lines = problem
    field_path = ".".join(str(part) for part in path) or None
    name = next((part for part in reversed(path) if isinstance(part, str)), "")
    if kind == "duplicate":
        count = len(lines)
        times = "twice" if count == 2 else f"{count} times"
        known = [n for n in lines if n is not None]
        distinct = sorted(set(known))
        where = ""
        if len(known) == count:  # JSONL lines say no more than the item's own line
            where = f" (line {distinct[0]})" if len(distinct) == 1 else f" (lines {_and(distinct)})"
        message = f"key {excerpt(value)} appears {times} in this mapping{where}; keep one"
        line = known[-1] if known else line
        return ManifestIssue(message, field=field_path, item_index=item_index, value=value, line=line)
    if kind == "not finite":
        help_text = ITEM_HELP.get(name, "a finite number")
        if math.isnan(value):
            message = f"NaN is not a number; use {help_text}"
        else:
            sign = "-" if value < 0 else ""
            message = (
                f"{sign}Infinity is not a finite number (a literal too big for a float, like 1e400, "
                f"becomes Infinity); use {help_text}"
            )
    else:
        surrogate = _SURROGATE.search(value).group().encode("utf-8", "backslashreplace").decode()
        what = f"the key {excerpt(value)}" if kind == "surrogate key" else excerpt(value)
        message = _SURROGATE_TEXT.format(where=f"({surrogate})").replace("the text", what, 1)
    return ManifestIssue(message, field=field_path, item_index=item_index, value=value, line=line)


def _and(numbers: list[int]) -> str:
    """"3, 7 and 9"; a long list keeps its first and last numbers ("1, 2, 3, 4, ... and 900")."""
    words = [str(n) for n in numbers]
    if len(words) > 6:
        words = [*words[:4], "...", words[-1]]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _load_jsonl(text: str) -> tuple[list[Any], list[int | None], ItemIssues]:
    """One item per line; a line that is not valid (not JSON, a repeated key, a NaN) is an issue
    of its item only, so that `skip_invalid` still runs the others."""
    items: list[Any] = []
    lines: list[int | None] = []
    item_issues: dict[int, list[ManifestIssue]] = {}
    duplicates: dict = {}
    # One decoder for all lines (json.loads would build one per line). Only "\n" ends a line:
    # str.splitlines() would also split at U+2028 and other characters
    # that JSON allows inside strings.
    decoder = json.JSONDecoder(object_pairs_hook=_pairs_hook(duplicates))
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        index = len(items)
        duplicates.clear()
        try:
            item = decoder.decode(line)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
            item = None
            problems = [ManifestIssue(_json_line_error(exc, line), item_index=index, line=number)]
        else:
            fatal, found = (None, []) if not duplicates and _plain(item) else _scan(item, duplicates)
            problems = [ManifestIssue(fatal, item_index=index, line=number)] if fatal else []
            problems += [_found_issue(f, f[0], item_index=index, line=number) for f in found]
        items.append(item)
        lines.append(number)
        if problems:
            item_issues[index] = problems
    return items, lines, item_issues


def _json_line_error(exc: Exception, line: str) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"invalid JSON at column {exc.colno}: {exc.msg}"
    if isinstance(exc, RecursionError):
        return "invalid JSON: nested too deeply; flatten it"
    long_number = _LONG_NUMBER.search(line)
    return _long_number_message(len(long_number.group())) if long_number else f"invalid JSON: {excerpt(str(exc), 200)}"


# CSV cells are text; numbers are parsed here so that the strict types see real numbers.
_INT_FIELDS = ("frames", "fps", "steps", "seed", "takes")
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


def _csv_value(name: str, cell: str) -> Any:
    cell = cell.strip()
    if name in _INT_FIELDS and re.fullmatch(r"[+-]?\d+", cell) and len(cell) <= 20:
        return int(cell)
    if name == "guidance_scale" and _NUMBER.fullmatch(cell):
        return float(cell)  # 1e400 becomes inf: reported by the walk
    if name == "seeds":  # "1 2 3" or "1;2;3": a list of integers, each checked by the item's type
        return [int(part) if re.fullmatch(r"[+-]?\d{1,20}", part) else part for part in re.split(r"[\s;,]+", cell) if part]
    return cell


def _load_csv(text: str) -> tuple[list[Any], list[int | None], list[ManifestIssue], ItemIssues]:
    issues: list[ManifestIssue] = []
    item_issues: dict[int, list[ManifestIssue]] = {}
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        return [], [], issues, item_issues
    except csv.Error as exc:
        return [], [], [ManifestIssue(f"invalid CSV header: {exc}", line=1)], item_issues
    for column in header:
        if column not in ITEM_FIELDS:
            issues.append(ManifestIssue(_unknown_field_message(column, ITEM_FIELDS), field=column, line=1))
    duplicates = sorted({c for c in header if header.count(c) > 1})
    for column in duplicates:
        issues.append(ManifestIssue("the column appears more than once in the header", field=column, line=1))
    known = [c if c in ITEM_FIELDS else None for c in header]
    items: list[Any] = []
    lines: list[int | None] = []
    try:
        for row in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            if len(row) > len(header):
                issues.append(
                    ManifestIssue(
                        f"the row has {len(row)} cells but the header has {len(header)}; quote cells with commas",
                        item_index=len(items),
                        line=line,
                    )
                )
            item = {n: _csv_value(n, cell) for n, cell in zip(known, row) if n and cell.strip()}
            found = [] if _plain(item) else _scan(item, None)[1]
            if found:
                item_issues[len(items)] = [_found_issue(f, f[0], item_index=len(items), line=line) for f in found]
            items.append(item)
            lines.append(line)
    except csv.Error as exc:
        issues.append(ManifestIssue(f"invalid CSV: {exc}", line=reader.line_num))
    return items, lines, issues, item_issues
