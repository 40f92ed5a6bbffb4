"""Validation of class-name lists."""

from __future__ import annotations

from collections.abc import Iterable

from edgeclip.errors import ClassNameError


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


def parse_class_list(text: str) -> list[str]:
    """Parse the CLI form "cat,dog,robot arm" (or a file path's contents, one per line)."""
    parts = text.replace("\n", ",").split(",")
    return [p for p in (" ".join(p.split()) for p in parts) if p]
