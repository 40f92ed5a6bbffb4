"""The public API lives at the package root, with real objects and signatures; the README uses only it."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import edgeclip

ROOT = Path(__file__).resolve().parents[1]


def test_every_public_name_resolves_to_the_real_object() -> None:
    for name in edgeclip.__all__:
        value = getattr(edgeclip, name)
        assert value is not None, name
        if inspect.isclass(value) or inspect.isfunction(value):
            assert value.__module__.startswith("edgeclip"), name
    assert "pretrained" in inspect.signature(edgeclip.export_bundle).parameters  # not a **kwargs wrapper
    assert list(inspect.signature(edgeclip.create_method).parameters)[:3] == ["name", "model", "class_names"]
    assert issubclass(edgeclip.InputError, ValueError) and issubclass(edgeclip.InputError, edgeclip.EdgeClipError)
    for name in edgeclip.list_methods():
        cls = edgeclip.runtime.methods.method_class(name)
        assert getattr(edgeclip, cls.__name__) is cls and getattr(edgeclip, cls.config_class.__name__) is \
            cls.config_class


def test_every_config_field_is_commented() -> None:
    """open_clip's CLIPVisionCfg style: a comment line above every field of every method's config."""
    for name in edgeclip.list_methods():
        cfg = edgeclip.runtime.methods.method_class(name).config_class
        configs = [c for c in cfg.__mro__ if "__dataclass_fields__" in vars(c)]
        source = "".join(inspect.getsource(c) for c in configs)
        for field in cfg.__dataclass_fields__:
            assert re.search(rf"#[^\n]*\n\s+{field}:", source), f"{cfg.__name__}.{field} has no comment"


def test_readme_snippets_import_from_the_package_root_only() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks
    for block in blocks:
        for line in block.splitlines():
            if re.match(r"\s*(import|from)\s", line):
                assert line.strip() == "import edgeclip", line
