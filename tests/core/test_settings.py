from pathlib import Path

import pytest

from callcenter.settings import SettingsError, load_settings


def test_defaults_are_embedded_sqlite_and_local_http() -> None:
    settings = load_settings(environ={})
    assert settings.database.url.startswith("sqlite:///")
    assert (settings.http.host, settings.http.port) == ("127.0.0.1", 8080)


def test_environment_overrides_every_key() -> None:
    settings = load_settings(environ={
        "CALLCENTER_DATABASE__URL": "postgresql://u@db/cc",
        "CALLCENTER_HTTP__PORT": "9090",
        "CALLCENTER_HTTP__HOST": "0.0.0.0",
        "CALLCENTER_CATALOGUE__EXTENSIONS": "config/catalogue/shenzhen-extensions.toml",
        "CALLCENTER_LOGGING__PRIVACY": "false",
    })
    assert settings.database.url == "postgresql://u@db/cc"
    assert settings.http.port == 9090 and settings.http.host == "0.0.0.0"
    assert settings.catalogue.extensions == ["config/catalogue/shenzhen-extensions.toml"]
    assert settings.logging.privacy is False


@pytest.mark.parametrize(("env", "named"), [
    ({"CALLCENTER_HTTP__PORT": "eighty"}, "CALLCENTER_HTTP__PORT"),
    ({"CALLCENTER_HTTP__PORT": "70000"}, "http.port"),
    ({"CALLCENTER_DATABASE__URL": "mysql://x"}, "database.url"),
    ({"CALLCENTER_HTTP__NOPE": "1"}, "http.nope"),
    ({"CALLCENTER_NOSECTION__KEY": "1"}, "nosection"),
])
def test_a_bad_value_names_the_key(env: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(environ=env)
    assert named.lower() in str(info.value).lower()


def test_config_file_and_its_errors(tmp_path: Path) -> None:
    good = tmp_path / "cc.toml"
    good.write_text('[http]\nport = 8181\n', encoding="utf-8")
    assert load_settings(good, environ={}).http.port == 8181
    bad = tmp_path / "bad.toml"
    bad.write_text("[http\nport=", encoding="utf-8")
    with pytest.raises(SettingsError, match="TOML"):
        load_settings(bad, environ={})
    with pytest.raises(SettingsError, match="not found"):
        load_settings(tmp_path / "missing.toml", environ={})
