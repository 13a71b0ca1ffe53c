"""Helpers of the console tests: a real control plane (auth on, SQLite, REST on port 0) with two workers, and a
real headless Chromium (Debian's ``chromium`` + ``chromium-driver``) driven by Selenium.

Selenium calls block, so the control plane and its workers (real :class:`~lmaas.server.sync.Syncer` streams over
:class:`~cp_harness.FakeHost`, whose versions with content ``corrupt...`` fail to load and are NACKed) run in an
event loop of their own thread; :meth:`Plane.call` runs a coroutine there. Screenshots go to
``.lmaas/test-output/console/`` (and, with ``LMAAS_UPDATE_SCREENSHOTS=1``, a copy to ``docs/screenshots/``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sys
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "control_plane"))  # cp_harness
__all__ = ["Plane", "login", "new_browser", "screenshot", "text_of", "wait_for"]

from cp_harness import ADMIN_TOKEN, address, running, settings, worker
from lmaas.control_plane.app import ControlPlane
from lmaas.control_plane.store.sqlite import SqliteStore
from prometheus_client import CollectorRegistry

T = TypeVar("T")


ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / ".lmaas" / "test-output" / "console"
README_SHOTS = ROOT / "docs" / "screenshots"
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1360,900")
WAIT = 30.0


class Plane:
    """A control plane and workers ``w1``, ``w2`` serving in a thread of their own."""

    def __init__(self, tmp: Path, workers: tuple[str, ...] = ("w1", "w2"), **overrides: object) -> None:
        self.tmp = tmp
        self.workers = workers
        self.overrides = overrides
        self.loop = asyncio.new_event_loop()
        self.cp: ControlPlane | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="console-plane", daemon=True)
        self._thread.start()
        if not self._ready.wait(60) or self._error is not None:
            raise RuntimeError(f"the control plane did not start: {self._error!r}")

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)  # grpc.aio looks the loop up from the thread
        try:
            self.loop.run_until_complete(self._main())
        except BaseException as exc:  # reported by __init__
            self._error = exc
            self._ready.set()
        finally:  # streams the browser left open end with the loop, not as warnings at exit
            pending = asyncio.all_tasks(self.loop)
            for task in pending:
                task.cancel()
            self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        store = SqliteStore(self.tmp / "store.db")
        try:
            async with contextlib.AsyncExitStack() as stack:
                if "prometheus_url" in self.overrides:
                    config = settings(self.tmp, http_port=0).model_copy(update=self.overrides)  # --prometheus-url
                    self.cp = ControlPlane(config, CollectorRegistry(), store=store)
                    await self.cp.start()
                    stack.push_async_callback(self.cp.stop, 0.5)
                else:
                    self.cp = await stack.enter_async_context(running(store, self.tmp, http_port=0, **self.overrides))
                for name in self.workers:
                    await stack.enter_async_context(worker(address(self.cp), self.tmp, name))
                self._ready.set()
                await self._stop.wait()
        finally:
            await store.close()

    def call(self, factory: Callable[[ControlPlane], Coroutine[Any, Any, T]]) -> T:
        assert self.cp is not None
        return asyncio.run_coroutine_threadsafe(factory(self.cp), self.loop).result(WAIT)

    @property
    def url(self) -> str:
        assert self.cp is not None
        return f"http://127.0.0.1:{self.cp.http_port}"

    @property
    def grpc(self) -> str:
        assert self.cp is not None
        return address(self.cp)

    def token(self, role: int, description: str = "console test") -> str:
        _, secret, _ = self.call(lambda cp: cp.tokens.create(role, description, created_by="test"))
        return secret

    def close(self) -> None:
        if self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
        self.loop.close()


def new_browser(tmp: Path) -> Any:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("chromium and chromium-driver are not installed (.ci/install-system.sh installs them)")
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must never download a browser or driver
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    profile = tmp / "chromium-profile"
    profile.mkdir(exist_ok=True)
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # console errors, CSP violations
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_script_timeout(WAIT)
    return driver


def wait_for(driver: Any, check: Callable[[Any], T], what: str, timeout: float = WAIT) -> T:
    """Polls ``check(driver)`` until it is truthy (Selenium's WebDriverWait), failing with ``what``."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    result: T = WebDriverWait(driver, timeout, poll_frequency=0.1,
                              ignored_exceptions=(StaleElementReferenceException,)).until(check, message=what)
    return result


def text_of(driver: Any, css: str) -> str:
    from selenium.webdriver.common.by import By

    found = driver.find_elements(By.CSS_SELECTOR, css)
    return str(found[0].text) if found else ""


def login(driver: Any, base: str, token: str = ADMIN_TOKEN) -> None:
    from selenium.webdriver.common.by import By

    driver.get(base + "/")
    box = wait_for(driver, lambda d: d.find_elements(By.ID, "token"), "the login form")[0]
    box.send_keys(token)
    driver.find_element(By.ID, "login-submit").click()
    wait_for(driver, lambda d: text_of(d, "#whoami"), "signed in")


def screenshot(driver: Any, name: str, title: str, *, readme: bool = False) -> Path:
    """Waits for the page titled ``title``, saves a PNG of it and checks it is a non-empty image."""
    wait_for(driver, lambda d: text_of(d, "main h1") == title, f"a page titled {title!r}")
    assert driver.title == f"{title} · LMaaS console"
    problems = [e["message"] for e in driver.get_log("browser")
                if "Content Security Policy" in e["message"] or "Uncaught" in e["message"]]
    assert not problems, problems  # no script error, nothing the CSP had to block
    words = text_of(driver, "main").split()
    assert "null" not in words and "undefined" not in words, "a missing value was rendered"
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    assert driver.save_screenshot(str(path))
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, f"{path}: {len(data)} bytes"
    if readme and os.environ.get("LMAAS_UPDATE_SCREENSHOTS") == "1":
        README_SHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, README_SHOTS / f"{name}.png")
    return path
