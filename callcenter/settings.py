"""One typed settings object for the whole service.

Loaded once in the composition root from `config/callcenter.toml` (or `--config PATH`),
then overridden key by key from `CALLCENTER_<SECTION>__<KEY>` environment variables.
Nothing else in the code base reads the environment or the config files.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = PROJECT_ROOT / "config"
DEFAULT_CONFIG_FILE = CONFIG_DIR / "callcenter.toml"
ENV_PREFIX = "CALLCENTER_"


class SettingsError(ValueError):
    """A settings problem, with the offending key named so start-up can say what to fix."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatabaseSettings(_Section):
    url: str = "sqlite:///var/callcenter.db"
    echo: bool = False
    pool_size: int = Field(default=10, ge=1, le=500)

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        scheme = value.split(":", 1)[0].split("+", 1)[0]
        if scheme not in {"sqlite", "postgresql", "postgres"}:
            raise ValueError("must be a sqlite:/// or postgresql:// URL")
        return value


class HttpSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    max_body_bytes: int = Field(default=256 * 1024, ge=1024)
    page_size_max: int = Field(default=200, ge=1, le=10_000)


class AgiSettings(_Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=4573, ge=0, le=65535)


class CaseSettings(_Section):
    timezone: str = "Asia/Shanghai"
    default_region: str = "CN"
    # Intake numbers are YYMMDD + daily serial + check digit; 5 serial digits -> 99,999 a day.
    serial_digits: int = Field(default=5, ge=3, le=5)


class CatalogueSettings(_Section):
    edition: str = "CJ/T 214-2005"
    files: list[str] = ["config/catalogue/cjt214-2005.toml"]
    extensions: list[str] = []


class GridSettings(_Section):
    files: list[str] = ["config/grids/440307-longgang-sample.csv"]


class MessageSettings(_Section):
    templates: str = "config/templates.toml"
    signature: str = ""


class LoggingSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["console", "json"] = "console"
    # When false, phone numbers and message bodies are logged in clear (local debugging only).
    privacy: bool = True


class Settings(_Section):
    database: DatabaseSettings = DatabaseSettings()
    http: HttpSettings = HttpSettings()
    agi: AgiSettings = AgiSettings()
    cases: CaseSettings = CaseSettings()
    catalogue: CatalogueSettings = CatalogueSettings()
    grids: GridSettings = GridSettings()
    messages: MessageSettings = MessageSettings()
    logging: LoggingSettings = LoggingSettings()

    def path(self, value: str) -> Path:
        """Resolve a configured path against the project root unless it is absolute."""
        candidate = Path(value)
        return candidate if candidate.is_absolute() else PROJECT_ROOT / candidate


def _env_overrides(environ: dict[str, str]) -> dict[str, dict[str, str]]:
    overrides: dict[str, dict[str, str]] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        rest = name[len(ENV_PREFIX):]
        if "__" not in rest:
            continue
        section, key = rest.split("__", 1)
        overrides.setdefault(section.lower(), {})[key.lower()] = value
    return overrides


def _coerce_env(value: str, current: Any) -> Any:
    """Env values are strings; lists are given as TOML arrays or comma-separated text."""
    if isinstance(current, list):
        text = value.strip()
        if text.startswith("["):
            try:
                return tomllib.loads(f"v = {text}")["v"]
            except tomllib.TOMLDecodeError:
                return value
        return [item.strip() for item in text.split(",") if item.strip()]
    return value


def load_settings(
    config_file: Path | str | None = None, environ: dict[str, str] | None = None
) -> Settings:
    """Read the TOML file, apply environment overrides, validate.

    Raises SettingsError naming the bad key (`http.port`, or `CALLCENTER_HTTP__PORT`).
    """
    environ = dict(os.environ if environ is None else environ)
    path = Path(config_file) if config_file else DEFAULT_CONFIG_FILE
    data: dict[str, Any] = {}
    if path.exists():
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"{path}: not valid TOML: {exc}") from exc
    elif config_file:
        raise SettingsError(f"config file not found: {path}")

    defaults = Settings().model_dump()
    sources: dict[str, str] = {}
    for section, keys in _env_overrides(environ).items():
        if section not in defaults:
            raise SettingsError(
                f"unknown settings section {section!r} in "
                f"{ENV_PREFIX}{section.upper()}__{next(iter(keys)).upper()}"
            )
        target = data.setdefault(section, {})
        for key, value in keys.items():
            current = defaults[section].get(key)
            target[key] = _coerce_env(value, current)
            sources[f"{section}.{key}"] = f"{ENV_PREFIX}{section.upper()}__{key.upper()}"
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            key = ".".join(str(part) for part in error["loc"])
            origin = sources.get(key, str(path))
            problems.append(f"{key} (from {origin}): {error['msg']}")
        raise SettingsError("invalid settings: " + "; ".join(problems)) from exc
