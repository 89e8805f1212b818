"""The review page in a real headless Chromium (Debian's `chromium` and `chromium-driver`,
driven by Selenium; scripts/system-packages.txt installs them): sign in, open a job from
the queue, look at it (full resolution, flip, zoom, mask, regions), accept it from the
keyboard, and find the decision, its reviewer and its webhook in the database; paint a
mask (brush, undo, redo), remove with it through a real worker and see the new result.

The API runs in a thread of this process (uvicorn) on the test's PostgreSQL and Redis.
Skipped, saying why, where Chromium or its driver is not installed."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import threading

import numpy as np
import pytest
import redis
import uvicorn
from PIL import Image
from sqlalchemy import select

from clearmark.settings import set_settings
from clearmark.workers.api import app
from clearmark.workers.db import Job, JobEvent, JobMetrics, session_scope
from clearmark.workers.jobs import MASK_EVENT
from clearmark.workers.storage import get_storage, read_uri
from clearmark.workers.tenants import create_reviewer_key, create_tenant
from clearmark.workers.webhooks import SIGNATURE_HEADER, verify_signature
from tests.badfiles import encode
from tests.services import product_photo, wait_for
from tests.test_api import receiver  # noqa: F401 - a fixture
from tests.test_review_page import add_job

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not (CHROMIUM and DRIVER),
        reason="Debian's chromium and chromium-driver are not installed (bash scripts/setup.sh installs "
        "them from scripts/system-packages.txt)",
    ),
]
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium (the test extra) is not installed")
By = pytest.importorskip("selenium.webdriver.common.by").By
Keys = pytest.importorskip("selenium.webdriver.common.keys").Keys
ActionBuilder = pytest.importorskip("selenium.webdriver.common.actions.action_builder").ActionBuilder


@pytest.fixture
def server(service):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    api = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=api.run, daemon=True)
    thread.start()
    wait_for(lambda: api.started, 30, "the API to start")
    yield f"http://127.0.0.1:{port}"
    api.should_exit = True
    thread.join(10)


@pytest.fixture
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,900"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=DRIVER))
    driver.implicitly_wait(0)
    yield driver
    driver.quit()


def visible(driver, css: str):
    return wait_for(
        lambda: next((e for e in driver.find_elements(By.CSS_SELECTOR, css) if e.is_displayed()), None),
        15,
        css,
    )


def js(driver, script: str):
    return driver.execute_script("return " + script)


def shot(driver, name: str) -> None:
    """With CLEARMARK_SCREENSHOTS set (a folder), keep a screenshot of the page there."""
    if folder := os.environ.get("CLEARMARK_SCREENSHOTS"):
        os.makedirs(folder, exist_ok=True)
        driver.save_screenshot(os.path.join(folder, f"{name}.png"))


def test_sign_in_open_a_job_flip_zoom_and_accept_from_the_keyboard(
    service, server, browser, receiver, workers
):
    """... and the storefront receives its webhook: a real worker on the webhooks queue
    delivers it to a receiver on 127.0.0.1, signed with the tenant's secret."""
    service = service.replace(webhook_allow_hosts=("127.0.0.1",))
    set_settings(service)
    with session_scope(service.database_url) as session:
        tenant, _ = create_tenant(session, "shop", webhook_url=receiver.url)
        secret = tenant.webhook_secret
        ids = [add_job(session, tenant, n) for n in range(2)]
    with session_scope(service.database_url) as session:
        key = create_reviewer_key(session, "shop", "ana")

    browser.get(server + "/review")
    visible(browser, "#key").send_keys(key + Keys.ENTER)
    wait_for(lambda: len(browser.find_elements(By.CSS_SELECTOR, "#jobs tbody tr")) == 2, 15, "the queue")
    assert "ana · shop" in browser.find_element(By.ID, "who").text
    assert "needs review: 2" in browser.find_element(By.ID, "counts").text
    shot(browser, "queue")

    browser.find_elements(By.CSS_SELECTOR, "#jobs tbody tr td")[1].click()  # the first job's name
    wait_for(lambda: js(browser, "document.getElementById('viewer').dataset.loaded") == "yes", 15, "images")
    assert browser.find_element(By.ID, "job-name").text == "photo-0.png"
    # Full resolution: the images are the stored files themselves, not thumbnails.
    assert js(
        browser,
        "[document.getElementById('img-before').naturalWidth, "
        "document.getElementById('img-after').naturalHeight]",
    ) == [120, 90]
    assert js(browser, "document.getElementById('img-after').complete") is True
    assert [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#regions .region")] == [
        "detector: removed",
        "text: not removed",
    ]
    assert "detector 0.91 -> 0.42 after: removed" in browser.find_element(By.ID, "region-list").text

    body = browser.find_element(By.TAG_NAME, "body")
    showing = "document.getElementById('viewer').dataset.showing"
    assert js(browser, showing) == "after"
    body.send_keys("f")
    assert js(browser, showing) == "before"
    body.send_keys("f")
    assert js(browser, showing) == "after"
    body.send_keys("1")
    assert browser.find_element(By.ID, "zoom-level").text == "100%"
    body.send_keys("+")
    assert browser.find_element(By.ID, "zoom-level").text == "125%"
    body.send_keys("m")
    assert "no-mask" in browser.find_element(By.ID, "viewer").get_attribute("class")
    painted = js(
        browser,
        "(() => { const c = document.getElementById('mask-layer'); "
        "return c.getContext('2d').getImageData(30, 30, 1, 1).data[3]; })()",
    )
    assert painted > 0  # the mark's pixels are coloured in the overlay (hidden now)

    body.send_keys("a")
    wait_for(lambda: browser.find_element(By.ID, "job-status").text == "succeeded", 15, "the new status")
    with session_scope(service.database_url) as session:
        job = session.get(Job, ids[0])
        assert job.status == "succeeded" and job.webhook_pending
        event = session.scalars(
            select(JobEvent).where(JobEvent.job_id == job.id).order_by(JobEvent.id.desc())
        ).first()
        assert (event.kind, event.detail["decision"], event.detail["reviewer"], event.detail["via"]) == (
            "review",
            "accept",
            "ana",
            "page",
        )
        assert session.get(Job, ids[1]).status == "needs_review"
    assert redis.Redis.from_url(service.broker_url).llen(service.queue_webhooks) == 1
    workers(service, "hooks", "-Q", service.queue_webhooks)  # prefork: its children load no engines
    wait_for(lambda: receiver.requests, 60, "the storefront's webhook")
    [(headers, sent)] = receiver.requests
    assert verify_signature(secret, headers[SIGNATURE_HEADER], sent)
    event = json.loads(sent)
    assert (event["type"], event["job"]["id"], event["job"]["status"]) == (
        "job.finished",
        ids[0],
        "succeeded",
    )
    wait_for(lambda: "by ana (page)" in browser.find_element(By.ID, "events").text, 15, "the history")

    body.send_keys("j")
    wait_for(lambda: browser.find_element(By.ID, "job-name").text == "photo-1.png", 15, "the next job")
    assert browser.find_element(By.ID, "job-status").text == "needs_review"

    body.send_keys(Keys.ESCAPE)
    wait_for(
        lambda: len(browser.find_elements(By.CSS_SELECTOR, "#jobs tbody tr")) == 1, 15, "the queue again"
    )
    browser.find_element(By.ID, "sign-out").click()
    visible(browser, "#key")
    refused = [e["message"] for e in browser.get_log("browser") if "Content Security Policy" in e["message"]]
    assert refused == []


def pixel_alpha(driver, canvas: str, x: int, y: int) -> int:
    return js(
        driver, f"document.getElementById('{canvas}').getContext('2d').getImageData({x}, {y}, 1, 1).data[3]"
    )


def drag(driver, points: list[tuple[int, int]]) -> None:
    """A pointer stroke through `points`, in the photo's pixels."""
    left, top, scale = js(
        driver,
        "(() => { const b = document.getElementById('viewer').getBoundingClientRect(); "
        "const m = new DOMMatrix(getComputedStyle(document.getElementById('stage')).transform); "
        "return [b.left + m.e, b.top + m.f, m.a]; })()",
    )
    actions = ActionBuilder(driver)
    at = [(round(left + x * scale), round(top + y * scale)) for x, y in points]
    actions.pointer_action.move_to_location(*at[0]).pointer_down()
    for x, y in at[1:]:
        actions.pointer_action.move_to_location(x, y)
    actions.pointer_action.pointer_up()
    actions.perform()


def test_paint_a_mask_undo_redo_and_remove_with_it(service, server, browser, workers):
    upload = product_photo(5, (160, 120))
    mask = np.zeros((120, 160), np.uint8)
    mask[30:50, 40:100] = 255  # what the pipeline changed
    storage = get_storage()
    with session_scope(service.database_url) as session:
        tenant, _ = create_tenant(session, "shop")
        job_id = add_job(session, tenant, 1)
        job = session.get(Job, job_id)
        job.source_uri = job.result_uri = storage.put(f"sources/{tenant.id}/p.png", encode(upload, "PNG"))
        job.mask_uri = storage.put(f"masks/{job_id}-1.png", encode(Image.fromarray(mask, "L"), "PNG"))
        metrics = session.get(JobMetrics, job_id)
        metrics.width, metrics.height = upload.size
    with session_scope(service.database_url) as session:
        key = create_reviewer_key(session, "shop", "ana")
    workers(service)  # it loads its engines while the page opens

    browser.get(server + f"/review#job/{job_id}")
    visible(browser, "#key").send_keys(key + Keys.ENTER)
    wait_for(lambda: js(browser, "document.getElementById('viewer').dataset.loaded") == "yes", 15, "images")
    body = browser.find_element(By.TAG_NAME, "body")
    body.send_keys("1")  # 1:1
    assert browser.find_element(By.ID, "remove-mask").get_attribute("disabled")
    body.send_keys("b")
    assert "on" in browser.find_element(By.ID, "tool-brush").get_attribute("class")
    # The editor starts from the job's mask, at the photo's full resolution.
    assert js(
        browser, "[document.getElementById('mask-edit').width, document.getElementById('mask-edit').height]"
    ) == [
        160,
        120,
    ]
    assert pixel_alpha(browser, "mask-edit", 70, 40) == 255 and pixel_alpha(browser, "mask-edit", 80, 95) == 0
    drag(browser, [(20, 95), (60, 95), (100, 95), (140, 95)])  # a mark the detector missed
    wait_for(lambda: pixel_alpha(browser, "mask-edit", 80, 95) == 255, 5, "the stroke")
    body.send_keys("u")
    assert pixel_alpha(browser, "mask-edit", 80, 95) == 0 and pixel_alpha(browser, "mask-edit", 70, 40) == 255
    assert browser.find_element(By.ID, "undo").get_attribute("disabled")
    body.send_keys("U")
    assert pixel_alpha(browser, "mask-edit", 80, 95) == 255

    browser.find_element(By.ID, "remove-mask").click()
    wait_for(
        lambda: "new result is in" in browser.find_element(By.ID, "edit-state").text, 240, "the new result"
    )
    assert browser.find_element(By.ID, "job-status").text == "needs_review"
    with session_scope(service.database_url) as session:
        job = session.get(Job, job_id)
        edit = session.scalars(
            select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.kind == MASK_EVENT)
        ).one()
        assert (edit.detail["reviewer"], edit.detail["via"], edit.detail["edit"]) == ("ana", "page", 1)
        result_uri = job.result_uri
    assert result_uri.endswith(f"{job_id}-edit1-1.png")
    inside = np.asarray(Image.open(io.BytesIO(read_uri(edit.detail["mask_uri"])))) > 0
    assert inside[95, 80] and inside[40, 70] and not inside[5, 5]
    out, src = np.asarray(Image.open(io.BytesIO(read_uri(result_uri))).convert("RGB")), np.asarray(upload)
    assert np.array_equal(out[~inside], src[~inside]) and not np.array_equal(out[inside], src[inside])
    # The page shows the new result and its mask (the stroke included).
    assert js(browser, "document.getElementById('img-after').src").endswith(
        "?at=" + js(browser, "encodeURIComponent(state.job.finished_at)")
    )
    assert pixel_alpha(browser, "mask-layer", 80, 95) > 0
    assert f"mask {100 * inside.mean():.1f}%" in browser.find_element(By.ID, "job-scores").text
    assert "mask_edit" in browser.find_element(By.ID, "events").text
    shot(browser, "edited-mask")

    body.send_keys("a")
    wait_for(lambda: browser.find_element(By.ID, "job-status").text == "succeeded", 15, "the decision")
    refused = [e["message"] for e in browser.get_log("browser") if "Content Security Policy" in e["message"]]
    assert refused == []
