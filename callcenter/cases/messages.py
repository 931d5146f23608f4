"""SMS texts for reporters, rendered from templates in config/ (Chinese defaults)."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

# Which case changes a reporter hears about, and the template each uses.
NOTIFY_TEMPLATES = ("received", "registered", "rejected", "dispatched", "closed", "reopened", "merged")
SINGLE_SMS_CHARS = 70


class TemplateError(ValueError):
    pass


@dataclass(frozen=True)
class MessageTemplates:
    templates: dict[str, str]
    signature: str = ""

    @classmethod
    def load(cls, path: Path, signature: str = "") -> MessageTemplates:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise TemplateError(f"{path}: {exc}") from exc
        templates = data.get("templates", {})
        missing = [name for name in NOTIFY_TEMPLATES if name not in templates]
        if missing:
            raise TemplateError(f"{path}: missing templates: {', '.join(missing)}")
        instance = cls(templates=dict(templates), signature=signature)
        for name in templates:  # fail at start-up, not when the first citizen is due a message
            instance.render(name, number="000000000000", platform_number="X", status="X",
                            reason="X", master="000000000000")
        return instance

    def render(self, name: str, **fields: str) -> str:
        try:
            template = self.templates[name]
        except KeyError as exc:
            raise TemplateError(f"no SMS template named {name!r}") from exc
        try:
            return template.format(signature=self.signature, **fields).strip()
        except (KeyError, IndexError, ValueError) as exc:
            raise TemplateError(f"template {name!r}: bad placeholder {exc}") from exc
