"""Headless Chromium for the MLflow UI: the tests' browser, and docs/screenshots.py's."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def chrome(window: str = "--window-size=1400,900"):  # noqa: ANN201 - a selenium WebDriver
    """A selenium Chrome driver on Debian's chromium and chromedriver, with a fresh profile
    folder (returned with it: the caller removes it after `driver.quit()`)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    profile = Path(tempfile.mkdtemp(prefix="tfkd-chromium-"))  # a fresh --user-data-dir
    for flag in (*FLAGS, f"--user-data-dir={profile}", window):
        options.add_argument(flag)
    driver_path = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    return webdriver.Chrome(options=options, service=Service(driver_path)), profile


EXPAND_BUTTON = "button[data-component-id*='runnamecellrenderer']"


def wait_for(driver, condition, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.5)
    return condition()


def expand_until_shown(driver, names: list[str], tries: int = 5) -> list[str]:
    """Open the sweep's row until its trials show; the names still missing after `tries`.

    The runs table renders, then gets its expand controls; on a loaded machine a click can land
    before the control reacts, so the click is repeated until the nested rows appear.
    """

    def missing() -> list[str]:
        return [n for n in names if n not in driver.page_source]

    for _ in range(tries):
        if not missing():
            break
        wait_for(driver, lambda: driver.find_elements("css selector", EXPAND_BUTTON))
        for button in driver.find_elements("css selector", EXPAND_BUTTON):
            button.click()
        wait_for(driver, lambda: not missing(), timeout=15)
    return missing()


ASSISTANT_CLOSE = "button[data-component-id='mlflow.assistant.chat_panel.close']"
RUN_NAME_RESIZE = ".ag-header-cell[col-id='attributes.`Run Name`'] .ag-header-cell-resize"


def tidy_for_screenshot(driver) -> None:
    """Close MLflow 3's assistant panel and widen the Run Name column, as a person would."""
    from selenium.webdriver import ActionChains

    for button in driver.find_elements("css selector", ASSISTANT_CLOSE):
        button.click()
    for handle in driver.find_elements("css selector", RUN_NAME_RESIZE)[:1]:
        ActionChains(driver).click_and_hold(handle).move_by_offset(120, 0).release().perform()
    time.sleep(1)


def click_text(driver, text: str, selector: str = "a, button, span") -> None:
    """Click the first element of `selector` that shows exactly `text`, once it is there."""

    from selenium.common.exceptions import StaleElementReferenceException

    def click() -> bool:  # the page may re-render between finding an element and clicking it
        try:
            shown = driver.find_elements("css selector", selector)
            found = [e for e in shown if e.text.strip() == text]
            if found:
                found[0].click()
            return bool(found)
        except StaleElementReferenceException:
            return False

    assert wait_for(driver, click), f"nothing shows {text!r}"
