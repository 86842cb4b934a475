"""The dashboard at /dashboard and the API reference at /docs, in a real browser: Debian's
Chromium driven by Playwright (no browser download), against a real API and worker.

`make test` installs Chromium where it can (scripts/install_test_packages.sh); without it the browser
tests are skipped saying so, and the cross-site checks (plain HTTP) still run. Set
WMQ_SCREENSHOTS=docs/screenshots to refresh the README's pictures."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.stack import ADMIN_TOKEN, ROOT, Stack, wait_until

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
#: The flags this machine's closed network needs (no calls home, no sandbox as root).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if CHROMIUM is None:
        pytest.skip("no Chromium on this machine: `apt-get install chromium` (make test does it as root)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Any, stack: Stack) -> Iterator[Any]:
    context = browser.new_context(base_url=f"http://127.0.0.1:{stack.port}", viewport={"width": 1300, "height": 900})
    context.set_default_timeout(15_000)
    opened = context.new_page()
    outside: list[str] = []
    opened.on("request", lambda r: outside.append(r.url) if urlsplit(r.url).hostname not in ("127.0.0.1", None)
              and not r.url.startswith("data:") else None)
    yield opened
    context.close()
    assert not outside, f"the page asked for something off this host: {outside}"


def screenshot(page: Any, name: str, tmp_path: Path) -> None:
    folder = Path(os.environ.get("WMQ_SCREENSHOTS") or tmp_path)
    if not folder.is_absolute():
        folder = ROOT / folder
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / name), full_page=False)


def log_in(page: Any) -> None:
    page.goto("/dashboard")
    page.wait_for_url("**/dashboard/login")
    page.fill("input[name=token]", ADMIN_TOKEN)
    page.click("button:has-text('Log in')")
    page.wait_for_url("**/dashboard")


def test_an_operator_logs_in_sees_a_queued_message_cancels_it_and_pauses(stack: Stack, page: Any,
                                                                         tmp_path: Path) -> None:
    shop = stack.create_instance(name="Loja Centro")
    other = stack.create_instance(name="Loja Norte")
    sent = stack.send_text(other, "already out")
    stack.wait_status(sent["zaapId"], "completed")
    waiting = stack.send_text(shop, "not yet", delayMessage=600)

    # Without a login, the page shows no instance data, only the form.
    page.goto("/dashboard")
    page.wait_for_url("**/dashboard/login")
    assert shop["id"] not in page.content() and "Loja" not in page.content()
    page.fill("input[name=token]", "not-the-token")
    page.click("button:has-text('Log in')")
    assert page.locator("[role=alert]").inner_text() == "That is not the admin token."

    log_in(page)
    cookie = next(c for c in page.context.cookies() if c["name"] == "wmq_dashboard")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and ADMIN_TOKEN not in cookie["value"]
    row = page.locator(f"tr[data-instance='{shop['id']}']")
    assert "Loja Centro" in row.inner_text() and row.locator("td.num").first.inner_text() == "1"
    # The chart, drawn from the last hour's sends (the one of Loja Norte), with no library from outside.
    wait_until(lambda: page.locator("#chart").get_attribute("data-sent") == "1", 20, "the chart to show the send")
    screenshot(page, "dashboard.png", tmp_path)

    page.click(f"a[href='/dashboard/instances/{shop['id']}']")
    queued = page.locator(f"tr[data-zaap-id='{waiting['zaapId']}']")
    assert "scheduled" in queued.inner_text()
    screenshot(page, "dashboard-instance.png", tmp_path)

    queued.locator("button:has-text('Cancel')").click()
    assert "cancelled (it was scheduled)" in page.locator(".flash").inner_text()
    assert stack.job(waiting["zaapId"])["status"] == "cancelled"
    assert "cancelled" in page.locator(f"tr[data-zaap-id='{waiting['zaapId']}']").inner_text()

    page.click("button:has-text('Pause')")
    assert page.locator("#paused").inner_text() == "yes"
    assert stack.one("SELECT paused FROM instances WHERE id = %s", (shop["id"],))["paused"] is True
    page.click("button:has-text('Resume')")
    assert page.locator("#paused").inner_text() == "no"

    # The message's history, from message_events.
    page.goto(f"/dashboard/messages/{waiting['zaapId']}")
    history = page.locator("table.events").inner_text()
    assert "scheduled" in history and "cancelled" in history


def test_a_discarded_message_is_retried_as_a_new_one_at_the_tail(stack: Stack, page: Any, tmp_path: Path) -> None:
    shop = stack.create_instance(name="Loja Sul")
    stack.simulate(shop, failMode="permanent", failNext=1)
    failed = stack.send_text(shop, "bad number")
    stack.wait_status(failed["zaapId"], "discarded")
    log_in(page)

    page.click("nav a:has-text('Failures')")
    row = page.locator(f"tr[data-zaap-id='{failed['zaapId']}']")
    reason = stack.job(failed["zaapId"])["last_error"]
    assert reason and row.locator(".error-text").inner_text() == reason
    screenshot(page, "dashboard-failures.png", tmp_path)
    row.locator("button:has-text('Retry as a new message (at the end of the queue)')").click()
    assert "Queued again as a new message" in page.locator(".flash").inner_text()

    copies = stack.all("SELECT zaap_id, sequence, payload, status FROM messages WHERE instance_id = %s "
                       "AND zaap_id <> %s", (shop["id"], failed["zaapId"]))
    assert len(copies) == 1 and copies[0]["payload"] == stack.job(failed["zaapId"])["payload"]
    assert copies[0]["sequence"] == 2
    stack.wait_status(copies[0]["zaap_id"], "completed")
    assert stack.job(failed["zaapId"])["status"] == "discarded"  # the old one keeps its history


def test_the_workers_page_and_the_api_reference(stack: Stack, page: Any, tmp_path: Path) -> None:
    log_in(page)
    page.click("nav a:has-text('Workers')")
    worker = stack.one("SELECT worker_id FROM dramatiq.worker")["worker_id"]
    assert "alive" in page.locator("table.workers tr", has_text=str(worker)).inner_text()

    page.goto("/docs")
    send_text = page.locator("#post--instances-instance-token-token-send-text")
    assert "send a text message" in send_text.inner_text()
    assert "message" in send_text.locator("table.body").inner_text()
    assert page.locator("link[rel=stylesheet]").get_attribute("href") == "/assets/dashboard.css"
    screenshot(page, "api-docs.png", tmp_path)


# -- without a browser: what another site or a script can and cannot do -------------------------


def session(stack: Stack) -> tuple[httpx.Client, str]:
    """A client logged in through the form, and the CSRF token its pages carry."""
    client = httpx.Client(base_url=str(stack.http.base_url), follow_redirects=False)
    answer = client.post("/dashboard/login", data={"token": ADMIN_TOKEN})
    assert answer.status_code == 303
    set_cookie = answer.headers["set-cookie"].lower()
    assert "httponly" in set_cookie and "samesite=strict" in set_cookie and "path=/dashboard" in set_cookie
    page = client.get("/dashboard", headers={"Accept": "text/html"}).text
    csrf = page.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    return client, csrf


def paused(stack: Stack, instance: dict[str, Any]) -> bool:
    return bool(stack.one("SELECT paused FROM instances WHERE id = %s", (instance["id"],))["paused"])


def test_actions_refuse_other_sites_and_pages_show_nothing_without_a_login(stack: Stack) -> None:
    shop = stack.create_instance(name="Loja Leste")
    stack.send_text(shop, "x", delayMessage=600)
    pause = f"/dashboard/instances/{shop['id']}/pause"

    anonymous = httpx.Client(base_url=str(stack.http.base_url), follow_redirects=False)
    for path in ("/dashboard", f"/dashboard/instances/{shop['id']}", "/dashboard/failures",
                 "/dashboard/workers", "/dashboard/throughput.json"):
        answer = anonymous.get(path)
        assert answer.status_code == 401 and shop["id"] not in answer.text, path
        assert anonymous.get(path, headers={"Accept": "text/html"}).headers["location"] == "/dashboard/login"
    assert anonymous.post(pause, data={"csrf": "x"}).status_code == 401
    assert anonymous.post("/dashboard/login", data={"token": "wrong"}).status_code == 401

    client, csrf = session(stack)
    assert client.post(pause, data={}).status_code == 403  # no CSRF token
    assert client.post(pause, data={"csrf": "forged"}).status_code == 403
    assert client.post(pause, data={"csrf": csrf}, headers={"Origin": "https://evil.example"}).status_code == 403
    assert not paused(stack, shop)
    answer = client.post(pause, data={"csrf": csrf, "next": "https://evil.example/"},
                         headers={"Origin": str(stack.http.base_url)})
    assert answer.status_code == 303 and answer.headers["location"] == "/dashboard"  # never off this site
    assert paused(stack, shop)

    # A script with the admin token as a bearer header needs no cookie and no CSRF token.
    bearer = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    assert anonymous.post(f"/dashboard/instances/{shop['id']}/resume", headers=bearer).status_code == 303
    assert not paused(stack, shop)
    for missing in ("/dashboard/instances/not-a-uuid", f"/dashboard/instances/{shop['token']}",
                    "/dashboard/messages/" + "0" * 32):
        assert anonymous.get(missing, headers=bearer).status_code == 404, missing
    no_pairing = anonymous.get(f"/dashboard/instances/{shop['id']}/qr", headers=bearer)
    assert no_pairing.status_code == 409 and "need no pairing" in no_pairing.text
    listed = anonymous.get("/dashboard", headers=bearer)
    assert listed.status_code == 200 and "Loja Leste" in listed.text
    assert "default-src 'self'" in listed.headers["content-security-policy"]
    stack.create_instance(name="Loja Oeste")
    found = anonymous.get("/dashboard", params={"q": "leste"}, headers=bearer).text
    assert "Loja Leste" in found and "Loja Oeste" not in found
    assert "Loja Oeste" in anonymous.get("/dashboard", params={"q": "OESTE"}, headers=bearer).text


def test_the_dashboard_rotates_an_instances_webhook_secret(stack: Stack) -> None:
    shop = stack.create_instance(name="Loja Norte")
    assert stack.http.put(f"{stack.base(shop)}/update-webhook-delivery",
                          json={"value": "https://hooks.example.com/x"}).status_code == 200
    before = stack.http.get(f"{stack.base(shop)}/webhooks").json()["secret"]
    client, csrf = session(stack)
    rotate = f"/dashboard/instances/{shop['id']}/rotate-webhook-secret"
    assert client.post(rotate, data={"csrf": "forged"}).status_code == 403
    assert stack.http.get(f"{stack.base(shop)}/webhooks").json()["secret"] == before
    answer = client.post(rotate, data={"csrf": csrf}, headers={"Origin": str(stack.http.base_url)})
    assert answer.status_code == 303
    after = stack.http.get(f"{stack.base(shop)}/webhooks").json()
    assert after["secret"] != before and after["previousSecretValidUntil"]
    page = client.get(answer.headers["location"], headers={"Accept": "text/html"}).text
    assert "Webhook secret rotated" in page and after["secret"] not in page and before not in page
    assert "Rotate webhook secret" in client.get(f"/dashboard/instances/{shop['id']}",
                                                 headers={"Accept": "text/html"}).text


def test_rows_show_the_recipient_and_the_first_words_escaped(stack: Stack) -> None:
    shop = stack.create_instance(name="Loja Centro")
    text = "<b>Olá</b> — seu pedido 42 saiu para entrega e chega hoje à tarde, obrigado!"
    waiting = stack.send_text(shop, text, delayMessage=600)
    document = stack.http.post(f"{stack.base(shop)}/send-document/pdf", json={
        "phone": "5511988887777", "document": "https://files.example.com/invoice.pdf", "fileName": "invoice-42.pdf",
        "delayMessage": 600})
    assert document.status_code == 200, document.text
    bearer = {"Authorization": f"Bearer {ADMIN_TOKEN}", "Accept": "text/html"}
    page = stack.http.get(f"/dashboard/instances/{shop['id']}", headers=bearer).text
    row = page.split(f'data-zaap-id="{waiting["zaapId"]}"', 1)[1].split("</tr>", 1)[0]
    assert "5511999999999" in row and "&lt;b&gt;Olá&lt;/b&gt; — seu pedido 42" in row and "<b>" not in row
    assert "…" in row and "obrigado" not in row, "cut at a few dozen characters"
    assert f'href="/dashboard/messages/{waiting["zaapId"]}"' in row
    row = page.split(f'data-zaap-id="{document.json()["zaapId"]}"', 1)[1].split("</tr>", 1)[0]
    assert "5511988887777" in row and "document: invoice-42.pdf" in row
