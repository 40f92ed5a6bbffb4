"""Prompt templates: exactly one `{}` and no other field, checked before any text is encoded."""

from __future__ import annotations

import pytest

from edgeclip.errors import ClassNameError, InputError
from edgeclip.runtime.classnames import validate_template


@pytest.mark.parametrize("template", ["a photo of a {}.", "{}", "a {{literal}} {} here", "{} }}{{"])
def test_good_templates_pass_unchanged(template: str) -> None:
    assert validate_template(template) == template
    assert template.format("cat").count("cat") == 1


@pytest.mark.parametrize(("template", "message"), [
    ("a {} in {place}", r"has the field \{place\}"),
    ("a {0} photo", r"has the field \{0\}"),
    ("a {!r} photo", r"has the field \{!r\}"),
    ("a {:>9} photo", r"has the field \{:>9\}"),
    ("a photo", r"has no \{\}"),
    ("{} and {}", r"has 2 \{\}"),
    ("a { photo", "malformed"),
    ("a } photo {}", "malformed"),
])
def test_bad_templates_say_what_is_wrong(template: str, message: str) -> None:
    with pytest.raises(ClassNameError, match=message):
        validate_template(template)


def test_errors_for_bad_values_are_value_errors() -> None:
    assert issubclass(ClassNameError, ValueError) and issubclass(InputError, ValueError)
    with pytest.raises(ValueError):
        validate_template(3)  # type: ignore[arg-type]
