"""The console in a real headless Chromium against the service on a real port (SQLite).

The app runs on its own event loop in a thread, so the blocking WebDriver calls here never
stall the server; case-service calls are handed to that loop.

Chromium missing: skipped locally, a failure when CI=true (as with PostgreSQL).
Set CALLCENTER_SCREENSHOTS=docs/screenshots to refresh the screenshots in the docs.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import shutil
import tempfile
import threading
from collections.abc import Coroutine, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy import select

from callcenter.app import Services, build_services
from callcenter.cases.lifecycle import CaseStatus
from callcenter.cases.model import Channel
from callcenter.db import migrate
from callcenter.db.tables import OutboxRow
from callcenter.service.cases import DraftInput, PlatformEvent
from callcenter.service.tasks import TaskKind
from callcenter.settings import Settings, load_settings
from sms.gateway import InboundMessage
from tests.console.conftest import PASSWORD, SUPERVISOR_BUJI, create_staff, with_console_settings
from tests.support.pg_fixtures import postgres_required

T = TypeVar("T")
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ROOT = Path(__file__).resolve().parents[2]


def _browser_missing() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            return f"{path} not found (Debian: apt-get install chromium chromium-driver; scripts/test does it as root)"
    return None


@pytest.fixture(scope="module")
def browser_available() -> None:
    reason = _browser_missing()
    if reason:
        if postgres_required():  # the same policy: CI=true means never skip
            pytest.fail(f"{reason}; browser tests are required in CI", pytrace=False)
        pytest.skip(reason)


class LiveConsole:
    """The service's app on 127.0.0.1:<free port>, on an event loop in a thread of its own."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="live-console", daemon=True)
        self.services: Services | None = None
        self.runner: Any = None
        self.base_url = ""

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    def start(self) -> None:
        from aiohttp import web

        from callcenter.web.app import make_app

        migrate.upgrade(self.settings.database.url)
        self.thread.start()

        async def start() -> None:
            self.services = build_services(self.settings)
            await create_staff(self.services)
            self.runner = web.AppRunner(make_app(self.services), access_log=None, shutdown_timeout=2)
            await self.runner.setup()
            site = web.TCPSite(self.runner, "127.0.0.1", 0)
            await site.start()
            port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            self.base_url = f"http://127.0.0.1:{port}"

        self.run(start())

    def stop(self) -> None:
        async def stop() -> None:
            if self.runner is not None:
                await self.runner.cleanup()
            if self.services is not None:
                await self.services.close()

        try:
            self.run(stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()

    @property
    def cases(self) -> Any:
        assert self.services is not None
        return self.services.cases

    def draft(self, **fields: Any) -> str:
        values: dict[str, Any] = {"channel": Channel.SMS, "description": "布吉街道井盖丢失",
                                  "reporter_phone": "13812345678", **fields}
        view = self.run(self.cases.create_draft(DraftInput(**values), actor="sms:gateway"))
        return view.number

    def outbox(self, phone: str) -> list[str]:
        assert self.services is not None
        services = self.services

        async def read() -> list[str]:
            async with services.sessions() as session:
                return list((await session.scalars(
                    select(OutboxRow.body).where(OutboxRow.recipient == phone).order_by(OutboxRow.id))).all())

        return self.run(read())

    # Supervisor tasks: sent through the tasks service, answered by SMS through the intake service.

    def send_task(self, number: str, kind: TaskKind = TaskKind.VERIFY) -> str:
        assert self.services is not None and self.services.sms is not None
        view = self.run(self.services.sms.tasks.create(case_number=number, kind=kind, actor="platform:dcp"))
        return view.code

    def supervisor_says(self, phone: str, text: str) -> None:
        assert self.services is not None and self.services.sms is not None
        result = self.run(self.services.sms.intake.receive(
            InboundMessage(sender=phone, destination="12319", text=text, source="http")))
        assert result.command == "task_reply", result

    def overdue_task(self, number: str, kind: TaskKind = TaskKind.CHECK) -> str:
        """A task sent longer ago than the escalation limit, escalated by the service's own pass."""
        assert self.services is not None and self.services.sms is not None
        tasks = self.services.sms.tasks
        back = dt.timedelta(minutes=self.settings.sms.task_escalation_minutes + 5)
        original = tasks.now
        tasks.now = lambda: dt.datetime.now(dt.UTC) - back
        try:
            code = self.send_task(number, kind)
        finally:
            tasks.now = original
        assert self.run(tasks.escalate_due()) == 1
        return code

    def registered(self, **fields: Any) -> str:
        """A case the platform has registered (立案), as supervisor tasks are about."""
        number = self.draft(**fields)
        self.run(self.cases.submit(number, actor="staff:王芳"))
        self.run(self.cases.apply_platform_event(number, PlatformEvent(event_id=f"{number}-reg",
                                                                       status=CaseStatus.REGISTERED)))
        return number


@pytest.fixture
def live(browser_available: None, tmp_path: Path) -> Iterator[LiveConsole]:
    base = load_settings(environ={})
    settings = with_console_settings(base.model_copy(update={
        "database": base.database.model_copy(update={"url": f"sqlite:///{tmp_path / 'console.sqlite3'}"}),
    }), tmp_path)
    server = LiveConsole(settings)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def browser(browser_available: None) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"  # selenium-manager must never download a driver
    profile = tempfile.mkdtemp(prefix="cc-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1440,1000", "--lang=zh-CN",
                 f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        logs = driver.get_log("browser")
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
        # A CSP violation or a script error is a bug even when the test passed; answers such as
        # 409 (a colleague's edit) or 401 (signed out) are expected and handled by the page.
        problems = [entry["message"] for entry in logs if entry["level"] == "SEVERE"
                    and "Failed to load resource" not in entry["message"]]
        assert not problems, problems


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    target = os.environ.get("CALLCENTER_SCREENSHOTS")
    path = (ROOT / target) if target and not os.path.isabs(target) else Path(target or tmp_path / "shots")
    path.mkdir(parents=True, exist_ok=True)
    return path


# ---------------------------------------------------------------------------- helpers


def wait(driver: Any, condition: Any, timeout: float = 10) -> Any:
    """Until `condition` holds. An element replaced while it was read (a list redrawn by a live
    event, a page replaced by a form post) is read again at the next poll."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1,
                         ignored_exceptions=(StaleElementReferenceException,)).until(condition)


def by_id(driver: Any, element_id: str) -> Any:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, element_id)


def css(driver: Any, selector: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def keys(driver: Any, *sequence: Any) -> None:
    """Type into whatever has the focus, as a keyboard would."""
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).send_keys(*sequence).perform()


def chord(driver: Any, modifier: str, key: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).key_down(modifier).send_keys(key).key_up(modifier).perform()


def active_id(driver: Any) -> str:
    return str(driver.execute_script("return document.activeElement && document.activeElement.id"))


def sign_in(driver: Any, live: LiveConsole, username: str = "wangfang", view: str = "") -> None:
    """Keyboard only: the username field has the focus; Tab to the password, Enter to send."""
    from selenium.webdriver.common.keys import Keys

    driver.get(live.base_url + "/console/")
    wait(driver, lambda d: d.current_url.split("?")[0].endswith("/console/login"))
    wait(driver, lambda d: active_id(d) == "username")
    keys(driver, username, Keys.TAB, PASSWORD, Keys.ENTER)
    wait(driver, lambda d: d.execute_script("return document.body.dataset.ready === '1'"))
    wait(driver, lambda d: "实时连接" in by_id(d, "live-status").text)
    if view:
        driver.execute_script("location.hash = arguments[0]", view)


def screenshot(driver: Any, path: Path) -> None:
    """The whole page, not just the window: grow the window until the document fits, then shoot."""
    width, height = driver.get_window_size()["width"], driver.get_window_size()["height"]
    try:
        for _ in range(4):
            full, inner = driver.execute_script(
                "return [document.documentElement.scrollHeight, window.innerHeight]")
            if full <= inner:
                break
            grown = driver.get_window_size()["height"] + int(full) - int(inner) + 16
            driver.set_window_size(width, min(grown, 4000))
        driver.save_screenshot(str(path))
    finally:
        driver.set_window_size(width, height)


def queue_numbers(driver: Any) -> list[str]:
    """Read in one go: the list is redrawn on live events, which would leave stale elements."""
    return list(driver.execute_script(
        "return [...document.querySelectorAll('#queue-list button')].map((b) => b.dataset.number)"))


# ---------------------------------------------------------------------------- tests


def test_sign_in_and_a_new_sms_draft_appears_without_a_reload(
        live: LiveConsole, browser: Any, shots: Path) -> None:
    browser.get(live.base_url + "/console/login")
    wait(browser, lambda d: by_id(d, "username").is_displayed())
    browser.save_screenshot(str(shots / "sign-in.png"))
    by_id(browser, "username").send_keys("wangfang")
    by_id(browser, "password").send_keys("wrong password")
    by_id(browser, "login-submit").click()
    wait(browser, lambda d: "用户名或密码错误" in by_id(d, "login-message").text)

    sign_in(browser, live)
    assert by_id(browser, "user-name").text == "王芳"
    assert queue_numbers(browser) == []
    browser.execute_script("window.__sameDocument = true")

    older = live.draft(description="坂田街道岗头社区路灯不亮，晚上很黑", reporter_phone="13900000001")
    newer = live.draft(description="布吉街道大芬社区垃圾满溢无人清理", reporter_phone="13900000002")
    wait(browser, lambda d: queue_numbers(d) == [older, newer])  # oldest first
    assert browser.execute_script("return window.__sameDocument") is True, "the page was reloaded"
    item = css(browser, f'#queue-list button[data-number="{newer}"]')[0]
    assert "短信" in item.text and "目标" in item.text and "建议类别" in item.text
    assert "13900000002" not in browser.page_source  # staff see masked numbers
    assert by_id(browser, "queue-count").text == "2"


def notice_codes(driver: Any, host: str, state: str) -> list[str]:
    """Task codes shown in one state's group (read in one go: the list is redrawn on events)."""
    return list(driver.execute_script(
        "return [...document.querySelectorAll(`#${arguments[0]} section[data-state='${arguments[1]}'] li`)]"
        ".map((li) => li.dataset.code)", host, state))


def text_of(driver: Any, selector: str) -> str:
    """The rendered text of the first match, read in one go ("" when there is none)."""
    return str(driver.execute_script(
        "const n = document.querySelector(arguments[0]); return n ? n.innerText : ''", selector))


def notice_count(driver: Any, host: str, state: str) -> str:
    return str(driver.execute_script(
        "const n = document.querySelector(`#${arguments[0]} section[data-state='${arguments[1]}'] .n-count`);"
        "return n ? n.textContent : '0'", host, state))


def test_a_supervisor_task_appears_live_and_moves_to_answered_after_the_sms_reply(
        live: LiveConsole, browser: Any, shots: Path) -> None:
    live.draft(description="坂田街道岗头社区路灯不亮，晚上很黑", reporter_phone="13900000011")
    live.draft(description="布吉街道大芬社区垃圾满溢无人清理", reporter_phone="13900000012")
    buji = live.registered(description="布吉圩社区人行道井盖丢失", reporter_phone="13700000021",
                           category="C0101", grid="44030700100101", address="布吉街道吉华路88号")
    bantian = live.registered(description="岗头社区垃圾箱满溢", reporter_phone="13700000022",
                              category="C0305", grid="44030700200101")
    overdue = live.overdue_task(bantian)

    sign_in(browser, live)
    wait(browser, lambda d: notice_codes(d, "notice-groups", "escalated") == [overdue])
    assert notice_count(browser, "notice-groups", "escalated") == "1"
    assert "岗头社区第01网格" in text_of(browser, "#notice-groups")
    browser.execute_script("window.__sameDocument = true")

    # The platform sends a verification task: it appears under 待回复 without a reload.
    task = live.send_task(buji)
    wait(browser, lambda d: notice_codes(d, "notice-groups", "waiting") == [task])
    item = text_of(browser, f'#notice-groups li[data-code="{task}"]')
    assert buji in item and "核实任务" in item and "张伟" in item
    assert "+86139****0001" in item and "时限 30分" in item
    assert "13900000001" not in browser.page_source  # staff see the supervisor's number masked

    # The supervisor texts 属实: the task moves to 已回复, still without a reload.
    live.supervisor_says(SUPERVISOR_BUJI, f"1 {task}")
    wait(browser, lambda d: notice_codes(d, "notice-groups", "answered") == [task])
    assert notice_codes(browser, "notice-groups", "waiting") == []
    assert "属实" in text_of(browser, f'#notice-groups li[data-code="{task}"]')
    assert notice_count(browser, "notice-groups", "answered") == "1"

    # One more task waiting, so every group is on the screenshot.
    waiting = live.send_task(bantian, TaskKind.VERIFY)
    wait(browser, lambda d: notice_codes(d, "notice-groups", "waiting") == [waiting])
    assert browser.execute_script("return window.__sameDocument") is True, "the page was reloaded"
    screenshot(browser, shots / "queue.png")

    # The case's page lists that case's tasks, and the log names the supervisor's answer.
    css(browser, f'#notice-groups li[data-code="{task}"] button.number')[0].click()
    wait(browser, lambda d: by_id(d, "d-number").text == buji)
    wait(browser, lambda d: notice_codes(d, "d-notice-groups", "answered") == [task])
    assert notice_codes(browser, "d-notice-groups", "escalated") == []
    assert "监督员回复" in by_id(browser, "d-log").text and "张伟" in by_id(browser, "d-log").text


def test_keyboard_only_transcription_is_logged_with_the_staff_members_name(
        live: LiveConsole, browser: Any) -> None:
    from selenium.webdriver.common.keys import Keys

    number = live.draft(description="布吉圩社区人行道上水井盖丢失", reporter_phone="13800001111")
    sign_in(browser, live)
    wait(browser, lambda d: number in queue_numbers(d))

    chord(browser, Keys.ALT, "q")  # into the queue
    wait(browser, lambda d: d.execute_script("return document.activeElement.dataset.number") == number)
    keys(browser, Keys.ENTER)  # open the draft; the description takes the focus
    wait(browser, lambda d: active_id(d) == "f-description" and by_id(d, "d-number").text == number)
    keys(browser, Keys.END, "，井口无遮挡")
    keys(browser, Keys.TAB)
    assert active_id(browser) == "f-category-q"
    keys(browser, "ssjg")  # pinyin initials of 上水井盖
    wait(browser, lambda d: css(d, "#f-category-list [role=option]"))
    keys(browser, Keys.ARROW_DOWN, Keys.ENTER)
    wait(browser, lambda d: by_id(d, "f-category-chosen").text.startswith("C0101"))
    assert active_id(browser) == "f-grid-q"
    keys(browser, "布吉圩")
    wait(browser, lambda d: len(css(d, "#f-grid-list [role=option]")) >= 2)
    keys(browser, Keys.ARROW_DOWN, Keys.ARROW_DOWN, Keys.ENTER)
    wait(browser, lambda d: by_id(d, "f-grid-chosen").text.startswith("44030700100102"))
    assert active_id(browser) == "f-address"
    keys(browser, "布吉街道吉华路88号")
    chord(browser, Keys.CONTROL, Keys.ENTER)  # save and submit

    wait(browser, lambda d: by_id(d, "d-status").text == "待立案")
    log = by_id(browser, "d-log").text
    assert "王芳" in log and "提交立案" in log and "修改转写" in log
    wait(browser, lambda d: number not in queue_numbers(d))
    view = live.run(live.cases.get(number))
    assert view.status == "submitted" and view.category == "C0101" and view.grid == "44030700100102"
    assert view.address == "布吉街道吉华路88号" and view.description.endswith("，井口无遮挡")
    assert [e.actor for e in view.log] == ["sms:gateway", "staff:王芳", "staff:王芳"]


def test_merge_tells_both_reporters_the_master_number(live: LiveConsole, browser: Any, shots: Path) -> None:
    master = live.draft(description="布吉圩社区第01网格污水井盖破损", reporter_phone="13700000001",
                        category="C0102", grid="44030700100101")
    duplicate = live.draft(description="布吉圩社区污水井盖坏了，有臭味", reporter_phone="13700000002",
                           category="C0102", grid="44030700100102")
    recording = Path(live.settings.console.recordings_dir) / "vm-1.wav"
    recording.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(32))
    live.draft(channel=Channel.PHONE, description="", recording_ref="vm-1.wav", flags=["needs_transcription"],
               reporter_phone="13700000003")
    sign_in(browser, live, view=f"#/case/{duplicate}")
    wait(browser, lambda d: by_id(d, "d-number").text == duplicate)
    wait(browser, lambda d: css(d, f'#dup-list li[data-number="{master}"]'))
    sms = by_id(browser, "d-sms").text
    assert "布吉圩社区污水井盖坏了" in sms and f"受理编号{duplicate}" in sms  # incoming text and our receipt
    screenshot(browser, shots / "draft.png")

    button = css(browser, f'#dup-list li[data-number="{master}"] button')[0]
    button.click()
    assert master in button.text  # asks once more before merging
    button.click()
    wait(browser, lambda d: by_id(d, "d-status").text == "已合并")
    assert by_id(browser, "d-master").text == master
    assert "王芳" in by_id(browser, "d-log").text
    assert any(master in body for body in live.outbox("+8613700000001"))
    assert any(master in body and "合并" in body for body in live.outbox("+8613700000002"))


def test_script_in_a_description_renders_as_text(live: LiveConsole, browser: Any) -> None:
    hostile = '<script>window.__xss = 1</script><img src="x" onerror="window.__xss = 2">井盖'
    number = live.draft(description=hostile, address="<b>加粗</b>")
    sign_in(browser, live, view=f"#/case/{number}")
    wait(browser, lambda d: by_id(d, "d-number").text == number)
    assert by_id(browser, "f-description").get_attribute("value") == hostile
    assert by_id(browser, "f-address").get_attribute("value") == "<b>加粗</b>"
    excerpt = css(browser, f'#queue-list button[data-number="{number}"] .q-excerpt')[0]
    assert excerpt.text == hostile[:80]
    assert hostile in by_id(browser, "d-sms").text
    assert browser.execute_script("return window.__xss") is None
    assert not css(browser, "#queue-list img, #d-sms img, #draft img, #queue-list b")


def test_a_colleagues_save_is_shown_and_the_typed_text_is_kept(live: LiveConsole, browser: Any) -> None:
    from selenium.webdriver.common.keys import Keys

    number = live.draft(description="龙城街道爱联社区路灯不亮")
    sign_in(browser, live, view=f"#/case/{number}")
    wait(browser, lambda d: by_id(d, "d-number").text == number)
    live.run(live.cases.update_transcription(number, {"address": "爱联社区如意路1号"}, actor="staff:李军"))
    field = by_id(browser, "f-description")
    field.send_keys(Keys.END, "，已有三天")
    chord(browser, Keys.CONTROL, "s")
    wait(browser, lambda d: by_id(d, "conflict").is_displayed())
    assert "该案件已被他人修改" in by_id(browser, "conflict").text
    assert "李军" in by_id(browser, "conflict-list").text
    assert field.get_attribute("value") == "龙城街道爱联社区路灯不亮，已有三天"  # typed text kept
    assert by_id(browser, "f-address").get_attribute("value") == "爱联社区如意路1号"  # colleague's change shown
    chord(browser, Keys.CONTROL, "s")
    wait(browser, lambda d: not d.find_element("id", "conflict").is_displayed())
    view = live.run(live.cases.get(number))
    assert view.description.endswith("已有三天") and view.address == "爱联社区如意路1号"


def test_screen_pop_and_dashboard(live: LiveConsole, browser: Any, shots: Path) -> None:
    from callcenter.console.state import console_key

    filed = live.draft(description="横岗社区道路积水", reporter_phone="13612345678", category="C0101",
                       grid="44030700400101")
    live.draft(description="坂田社区垃圾满溢", reporter_phone="13600000009", category="C0305",
               grid="44030700200201")
    # Cases further along, so the evaluation figures have something to count.
    for index, (category, grid) in enumerate([("C0101", "44030700100101"), ("C0118", "44030700100101"),
                                              ("C0305", "44030700300101")]):
        number = live.draft(description=f"已处理案件{index}", reporter_phone=f"1350000000{index}",
                            category=category, grid=grid)
        live.run(live.cases.submit(number, actor="staff:王芳"))
        steps = [CaseStatus.REGISTERED, CaseStatus.DISPATCHED, CaseStatus.FEEDBACK, CaseStatus.CLOSED]
        for step, status in enumerate(steps[: 4 if index < 2 else 1]):
            live.run(live.cases.apply_platform_event(number, PlatformEvent(event_id=f"{number}-{step}",
                                                                           status=status)))
        if index < 2:  # supervisor tasks for the 督办 figures: one answered, one escalated
            if index == 0:
                live.supervisor_says(SUPERVISOR_BUJI, f"属实 {live.send_task(number, TaskKind.VERIFY)}")
            else:
                live.overdue_task(number)
    live.send_task(live.draft(description="坂田社区占道经营", reporter_phone="13500000009", category="C0305",
                              grid="44030700200201"))
    sign_in(browser, live)
    runner_app = live.runner.app
    hub = runner_app[console_key].hub
    # As the voice channel publishes it when the IVR hands the caller to a person.
    live.loop.call_soon_threadsafe(hub.publish, "screen_pop", {"agent": "wangfang", "phone": "+8613612345678",
                                                               "call_id": "c-1", "case_number": filed})
    wait(browser, lambda d: by_id(d, "view-pop").is_displayed())
    wait(browser, lambda d: "+86136****5678" in by_id(d, "pop-caller").text)
    wait(browser, lambda d: "横岗社区道路积水" in by_id(d, "pop-open").text)
    wait(browser, lambda d: filed in by_id(d, "pop-draft").text)
    assert by_id(browser, "pop-draft-box").is_displayed()
    assert by_id(browser, "p-phone").get_attribute("value") == "+86136****5678"
    by_id(browser, "p-description").send_keys("来电反映：横岗社区井盖松动")
    css(browser, "#pop-form button[type=submit]")[0].click()
    wait(browser, lambda d: d.execute_script("return location.hash").startswith("#/case/"))
    number = browser.execute_script("return location.hash").split("/")[-1]
    assert live.run(live.cases.get(number)).reporter_phone == "+8613612345678"

    browser.get(live.base_url + "/console/#/dashboard")
    wait(browser, lambda d: css(d, "#chart-category svg rect.bar"))
    cards = by_id(browser, "cards-today").text
    assert "今日来电" in cards and "暂无数据" in cards and "待处理草稿" in cards
    assert "结案率" in by_id(browser, "cards-eval").text
    supervision = by_id(browser, "cards-supervision").text
    assert "今日派发\n3" in supervision and "今日回复\n1" in supervision
    assert "待回复\n1" in supervision and "今日升级\n1" in supervision
    assert len(css(browser, "#chart-grid svg rect.bar")) == 4
    # A period in which the registered cases fall due: rates are drawn.
    browser.execute_script(
        "const to = new Date(Date.now() + 4 * 86400000).toISOString().slice(0, 10);"
        "document.getElementById('period-to').value = to;")
    css(browser, "#period-form button")[0].click()
    wait(browser, lambda d: "66.7%" in by_id(d, "cards-eval").text)  # 2 of 3 due cases closed
    screenshot(browser, shots / "dashboard.png")


def test_an_expired_session_sends_the_page_to_sign_in_with_a_message(live: LiveConsole, browser: Any) -> None:
    from sqlalchemy import update

    from callcenter.db.tables import ConsoleSessionRow

    sign_in(browser, live)
    assert live.services is not None
    services = live.services

    async def expire() -> None:
        async with services.sessions() as session, session.begin():
            await session.execute(update(ConsoleSessionRow).values(expires_at=ConsoleSessionRow.created_at))

    live.run(expire())
    by_id(browser, "nav-dashboard").click()  # the next request finds the session gone
    wait(browser, lambda d: "/console/login" in d.current_url)
    assert "登录已超时，请重新登录" in by_id(browser, "login-message").text


def test_reject_asks_first_a_submit_opens_the_next_draft_and_a_wrong_password_keeps_the_name(
        live: LiveConsole, browser: Any) -> None:
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    first = live.draft(description="布吉圩社区上水井盖丢失", category="C0101", grid="44030700100102")
    second = live.draft(description="路灯不亮", reporter_phone="13800002222")
    third = live.draft(description="不是城管的事", reporter_phone="13800003333")

    # A wrong password: the name stays, the password field has the focus.
    browser.get(live.base_url + "/console/")
    wait(browser, lambda d: active_id(d) == "username")
    keys(browser, "wangfang", Keys.TAB, "wrong-password", Keys.ENTER)
    wait(browser, lambda d: "用户名或密码错误" in by_id(d, "login-message").text)
    assert by_id(browser, "username").get_attribute("value") == "wangfang"
    wait(browser, lambda d: active_id(d) == "password")
    keys(browser, PASSWORD, Keys.ENTER)
    wait(browser, lambda d: d.execute_script("return document.body.dataset.ready === '1'"))
    assert browser.execute_script(
        "return document.querySelector('link[rel=icon]').href").endswith("/console/static/favicon.svg")

    # Submit the oldest draft: the next one opens by itself.
    browser.execute_script("location.hash = arguments[0]", f"#/case/{first}")
    wait(browser, lambda d: by_id(d, "d-number").text == first)
    chord(browser, Keys.CONTROL, Keys.ENTER)
    wait(browser, lambda d: by_id(d, "d-number").text == second)
    assert browser.current_url.endswith(f"#/case/{second}")
    assert live.run(live.cases.get(first)).status == "submitted"

    # 不予立案 asks once more, naming the reason; nothing happens until the second press.
    browser.execute_script("location.hash = arguments[0]", f"#/case/{third}")
    wait(browser, lambda d: by_id(d, "d-number").text == third)
    Select(by_id(browser, "reject-reason")).select_by_value("out_of_scope")
    button = by_id(browser, "reject-button")
    button.click()
    wait(browser, lambda d: "确认不予立案" in by_id(d, "reject-button").text)
    assert "不属于城管受理范围" in by_id(browser, "reject-button").text
    assert live.run(live.cases.get(third)).status == "draft"
    by_id(browser, "reject-button").click()
    wait(browser, lambda d: by_id(d, "d-status").text == "不予立案")
    assert live.run(live.cases.get(third)).status == "rejected"
    assert by_id(browser, "reject-button").text == "不予立案"
