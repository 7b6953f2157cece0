"""Every generated text file comes from a jinja2 template in amberpi/templates/."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"

_ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    trim_blocks=True,
    lstrip_blocks=True,
    autoescape=False,
)


def render(template: str, **values: Any) -> str:
    return _ENV.get_template(template).render(**values)


def write_rendered(target: Path, template: str, *, mode: int = 0o644, **values: Any) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_symlink():
        target.unlink()
    target.write_text(render(template, **values))
    target.chmod(mode)


def template_paths() -> list[Path]:
    return sorted(TEMPLATES_DIR.glob("*.j2"))
