from pathlib import Path

import pytest

from callcenter.cases.messages import NOTIFY_TEMPLATES, SINGLE_SMS_CHARS, MessageTemplates, TemplateError
from callcenter.settings import CONFIG_DIR


def test_default_texts_fit_one_sms_and_start_with_the_number() -> None:
    templates = MessageTemplates.load(CONFIG_DIR / "templates.toml")
    for name in NOTIFY_TEMPLATES:
        text = templates.render(name, number="261124000421", platform_number="E0103202611240001",
                                status="已立案", reason="重复反映", master="261124000439")
        assert text.startswith("受理编号261124000421"), name
        assert len(text) <= SINGLE_SMS_CHARS, (name, len(text))


def test_a_broken_template_file_stops_start_up(tmp_path: Path) -> None:
    broken = tmp_path / "t.toml"
    broken.write_text('[templates]\nreceived = "{nope}"\n', encoding="utf-8")
    with pytest.raises(TemplateError):
        MessageTemplates.load(broken)
