"""A real browser on the dashboard: headless Chromium (Debian's chromium and
chromium-driver, driven by selenium) loads the page of a live two-node cluster.

Set SEGSYNC_SCREENSHOTS=DIR to keep a screenshot of the page (docs/dashboard.png)."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import trio

from helpers import make_name, write_segment_file
from test_dashboard import HOLE_MINUTE, TOMB_MINUTE, expected_row, hour_start, write_hour
from protocol.coverage import FULL, SAME
from protocol.names import format_hour

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select
except ImportError:  # pragma: no cover - the test extra installs it
    webdriver = None

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or DRIVER is None or webdriver is None,
    reason="needs Chromium and chromedriver (apt-get install chromium chromium-driver) "
           "and selenium (the test extra)",
)

DEADLINE = 20.0  # seconds for the page to show a change (it polls every 2 s)


def start_browser(profile: str):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}",
                 "--window-size=1400,900"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)


class Page:
    """Blocking selenium calls, run in a worker thread; waits poll with a deadline."""

    def __init__(self, driver) -> None:
        self.driver = driver

    async def run(self, fn, *args):
        return await trio.to_thread.run_sync(fn, *args)

    async def wait_for(self, probe, what: str):
        """Poll `probe(driver)` (in a thread) until it is truthy."""
        last = None
        with trio.move_on_after(DEADLINE) as scope:
            while True:
                last = await self.run(lambda: _safe(probe, self.driver))
                if last:
                    return last
                await trio.sleep(0.1)
        if scope.cancelled_caught:
            raise AssertionError(f"page never showed {what}; last seen: {last!r}")


def _safe(probe, driver):
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException

    try:
        return probe(driver)
    except (StaleElementReferenceException, WebDriverException):
        return None


def peer_row(driver, url: str):
    rows = driver.find_elements(By.CSS_SELECTOR, f'#peers tbody tr[data-peer="{url}"]')
    if not rows:
        return None
    return {td.get_attribute("class").split()[0]: td.text
            for td in rows[0].find_elements(By.TAG_NAME, "td")}


def recorded_row(driver, pair: str):
    rows = driver.find_elements(By.CSS_SELECTOR, f'#recorded-pairs tbody tr[data-pair="{pair}"]')
    if not rows or not driver.find_element(By.ID, "recorded").is_displayed():
        return None
    return {td.get_attribute("class"): td.text for td in rows[0].find_elements(By.TAG_NAME, "td")}


def map_row(driver, hour: str):
    rows = driver.find_elements(
        By.CSS_SELECTOR, f'section.map[data-pair="desertbus/source"] .row[data-hour="{hour}"]')
    if not rows:
        return None
    cells = rows[0].find_elements(By.CSS_SELECTOR, "span[class^='c-']")
    return "".join(c.get_attribute("class").removeprefix("c-") for c in cells)


async def test_dashboard_in_chromium(cluster_factory):
    profile = tempfile.mkdtemp(prefix="segsync-chromium-")
    try:
        # both declare the pair their downloader records (config `records`)
        async with cluster_factory(2, records=["desertbus/source"],
                                   recording_grace=3600) as c:
            a, b = c.nodes
            start = hour_start(2)
            write_hour(c.root(0), start, skip_minute=HOLE_MINUTE, tombstone_minute=TOMB_MINUTE)
            await a.local_files.rescan(announce_new=False)
            driver = await trio.to_thread.run_sync(start_browser, profile)
            page = Page(driver)
            try:
                await page.run(driver.get, a.url + "/")
                row = await page.wait_for(
                    lambda d: (r := peer_row(d, b.url)) and r["reachable"] == "yes" and r,
                    "peer b reachable")
                assert row["kind"] == "segsync" and row["result"] == "-"
                recorded = await page.wait_for(
                    lambda d: recorded_row(d, "desertbus/source"), "the declared pair")
                assert recorded["declared"] == "yes" and recorded["recording"] == "yes"
                hour = format_hour(start)
                cells = await page.wait_for(lambda d: map_row(d, hour), f"the row of {hour}")
                assert cells == expected_row(HOLE_MINUTE, TOMB_MINUTE)

                # a new segment arrives: the map and the sparkline follow
                later = hour_start(1)
                for i in range(3):  # three 20 s segments fill minute 5
                    data = os.urandom(500)
                    name = make_name(data, later + dt.timedelta(minutes=5, seconds=20 * i),
                                     duration="20.0")
                    write_segment_file(c.root(0), name, data)
                later_hour = format_hour(later)
                cells = await page.wait_for(
                    lambda d: (r := map_row(d, later_hour)) and r[5] == FULL and r,
                    "minute 5 of the next hour turning full")
                assert cells.count(FULL) == 1
                # its "downloader" (this test) wrote them: the pair's last local file
                await page.wait_for(
                    lambda d: (r := recorded_row(d, "desertbus/source"))
                    and r["last-local"].endswith("ago"), "the pair's last local file")
                summary = await page.wait_for(
                    lambda d: (t := d.find_element(By.ID, "latency-summary").text)
                    and "p50" in t and t, "a push latency")
                assert "ms" in summary
                points = await page.run(lambda: driver.find_element(
                    By.CSS_SELECTOR, "#sparkline polyline").get_attribute("points"))
                assert points.strip()

                if shots := os.environ.get("SEGSYNC_SCREENSHOTS"):
                    await page.run(driver.save_screenshot, str(Path(shots) / "dashboard.png"))

                # the difference with b, chosen in the page: push brought b everything,
                # the tombstone too (a planted difference is in test_dashboard.py)
                def choose_diff(d):
                    Select(d.find_element(By.ID, "view")).select_by_visible_text(
                        f"this node vs {b.config.node_name}")
                    return True

                await page.wait_for(choose_diff, "the difference view")
                await page.wait_for(
                    lambda d: d.find_element(By.ID, "maps").get_attribute("data-view") == "diff",
                    "the difference map")
                await page.wait_for(lambda d: map_row(d, hour) == SAME * 60,
                                    "b holding the same as a, tombstone included")
                await page.wait_for(lambda d: map_row(d, later_hour) == SAME * 60,
                                    "b holding the new segments too")
                await page.wait_for(lambda d: peer_row(d, b.url)["queue"] == "0",
                                    "the push queue to b drained")
            finally:
                await trio.to_thread.run_sync(driver.quit)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
