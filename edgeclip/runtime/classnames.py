"""Class names and prompt templates: validation, and reading them from the command line's forms."""

from __future__ import annotations

import codecs
import string
from collections.abc import Iterable
from pathlib import Path

from edgeclip.errors import ClassNameError

__all__ = ["parse_class_list", "parse_class_spec", "read_class_file", "validate_class_names", "validate_template"]


def validate_class_names(names: Iterable[str]) -> list[str]:
    """Strip, check and return the class names: non-empty list, non-empty names, no duplicates."""
    if isinstance(names, str):
        raise ClassNameError(f"class names must be a list of strings, got the single string {names!r}")
    out: list[str] = []
    seen: dict[str, str] = {}
    for raw in names:
        if not isinstance(raw, str):
            raise ClassNameError(f"class names must be strings, got {type(raw).__name__}: {raw!r}")
        name = " ".join(raw.split())
        if not name:
            raise ClassNameError("a class name is empty or only whitespace")
        key = name.lower()
        if key in seen:
            raise ClassNameError(f"duplicate class name {name!r} (same as {seen[key]!r})")
        seen[key] = name
        out.append(name)
    if not out:
        raise ClassNameError("the class list is empty: give at least one class name")
    return out


def validate_template(template: str) -> str:
    """Return `template` if it is a prompt template with exactly one ``{}`` (where the class name goes) and no
    other replacement field; ``{{`` and ``}}`` stand for literal braces. Raises `ClassNameError` otherwise.

    >>> validate_template("a photo of a {}.")
    'a photo of a {}.'
    """
    if not isinstance(template, str):
        raise ClassNameError(f"a prompt template must be a string, got {type(template).__name__}")
    try:
        fields = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:  # a lone '{' or '}'
        raise ClassNameError(
            f"prompt template {template!r} is malformed ({exc}); write {{}} where the class name goes and "
            "{{ or }} for a literal brace"
        ) from exc
    others = [f"{{{name}{'!' + conv if conv else ''}{':' + spec if spec else ''}}}"
              for name, spec, conv in fields if name or spec or conv]
    if others:
        raise ClassNameError(
            f"prompt template {template!r} has the field{'s' if len(others) > 1 else ''} {', '.join(others)}; "
            "only {} (where the class name goes) is allowed: write {{ or }} for a literal brace"
        )
    if len(fields) != 1:
        count = "no {}" if not fields else f"{len(fields)} {{}}"
        raise ClassNameError(
            f"prompt template {template!r} has {count}: it needs exactly one {{}} where the class name goes, "
            "e.g. 'a photo of a {}.'"
        )
    return template


def parse_class_list(text: str) -> list[str]:
    """Parse the command line's inline form "cat,dog,robot arm": names split at commas (and line breaks),
    spaces collapsed, empty entries dropped (validate the result with `validate_class_names`)."""
    return [p for p in (" ".join(p.split()) for p in text.replace("\n", ",").split(",")) if p]


def read_class_file(path: str | Path) -> list[str]:
    """Class names from a UTF-8 text file, one per line: commas stay inside a name, a byte-order mark is
    dropped, surrounding spaces are stripped and blank lines skipped.

    Raises:
        ClassNameError: the file is missing or unreadable, is not UTF-8 (naming the first bad byte's offset),
            or holds no name.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise ClassNameError(f"class file {p} does not exist or is not a file")
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ClassNameError(f"class file {p} cannot be read ({exc.strerror or exc})") from exc
    bom = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        text = data[bom:].decode("utf-8")
    except UnicodeDecodeError as exc:
        offset = bom + exc.start
        raise ClassNameError(
            f"class file {p} is not UTF-8 text: byte 0x{data[offset]:02x} at offset {offset} cannot be decoded; "
            "save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)"
        ) from None
    names = [" ".join(line.split()) for line in text.splitlines()]
    names = [n for n in names if n]
    if not names:
        raise ClassNameError(f"class file {p} holds no class names (one name per line)")
    return names


def parse_class_spec(spec: str) -> list[str]:
    """The command line's ``--classes`` value: ``@FILE`` reads `read_class_file`, anything else is split at
    commas (`parse_class_list`)."""
    if spec.startswith("@"):
        return read_class_file(spec[1:])
    return parse_class_list(spec)
