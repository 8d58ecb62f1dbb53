"""The security console in a real browser: Debian's Chromium, driven by Playwright (pointed at
the system browser; nothing is downloaded), signs in through Airflow's own login page on a
real API server with the plugin, opens the "Secrets" page from Airflow's navigation and clicks
through every view. Screenshots are kept (under the test's tmp path and test-artifacts/console/).

It asserts that no secret value (canaries) is in any page's text, any DOM or any network
response; that no token reaches the page; that an auditor sees the console, and that an
Airflow user with no binding in the vault is refused with the vault's reason; and that a
vault viewer opens on the inventory, with the views it may not use greyed out and why; and
that the Alerts view shows an open alert (a person's read) and the break-glass requests waiting
for a second engineer or open, counted on the tab, with nothing to approve them by.

The server runs under a path prefix (``[api] base_url = http://127.0.0.1:PORT/airflow``), as
behind a proxy that serves Airflow below a path: the nav entry and the page's own requests
must stay under it (test_console_app checks the same without a prefix, and without a browser)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from airflow_provider_mlsecrets.errors import AccessDenied
from airflow_provider_mlsecrets.rotation.policy import RotationPolicy
from airflow_provider_mlsecrets.service import Caller
from airflow_provider_mlsecrets.service._core import utcnow
from tests.airflow_env import BACKEND, PASSWORD, ROOT, AirflowEnv
from tests.airflow_env import airflow_env as airflow_env  # the fixture
from tests.test_service import free_port, wait_for

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CANARY = "console-canary-" + secrets.token_hex(8)
CRITICAL_CANARY = "critical-canary-" + secrets.token_hex(8)
INCIDENT = "incident 7: a payments DB login from an unknown host"
# alice a security engineer, bob an auditor, carol unbound, dave a vault viewer of ml/**
USERS = "alice:admin,bob:viewer,carol:viewer,dave:op"
VIEWS = ("overview", "inventory", "principals", "rotation", "audit", "keys", "alerts")
ARTIFACTS = ROOT / "test-artifacts" / "console"
PREFIX = "/airflow"  # the path of [api] base_url
TIMEOUT = 30_000  # ms, for one element or answer


def _need(what: str) -> None:
    """In CI a missing browser fails loudly; elsewhere the test says what to install."""
    message = f"the console's browser test needs {what} (scripts/bootstrap installs it)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@dataclass
class Console:
    url: str
    passwords: dict[str, str]
    canaries: tuple[str, ...]
    shots: Path
    routes: set[str] = field(default_factory=set)  # the vault's published routes
    cli_env: dict[str, str] = field(default_factory=dict)  # the mlsecrets CLI as the engineer


@dataclass
class Seen:
    url: str
    status: int
    headers: dict[str, str]
    body: bytes | None  # None: a redirect, which has none, or lost (below)
    lost: bool = False  # its page went away before its body could be read


@dataclass
class Session:
    """One signed-in browser context, with every response it received, read as it came in
    (a page navigated away from keeps no body)."""

    page: Any
    responses: list[Seen] = field(default_factory=list)

    def record(self, response: Any) -> None:
        body, lost = None, False
        if not 300 <= response.status < 400:
            try:
                body = response.body()
            except Exception:  # Airflow's UI navigated on before the body arrived
                lost = True
        self.responses.append(Seen(response.url, response.status, response.all_headers(),
                                   body, lost))

@pytest.fixture(scope="module")
def console(airflow_env: AirflowEnv, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[Console]:
    if not CHROMIUM.exists():
        _need("Debian's chromium at /usr/bin/chromium")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _need("the playwright package (the test extra)")
    vault, admin = airflow_env.vault, airflow_env.admin
    vault.alerts.run_pass()  # the first pass seeds: what came before raises nothing
    vault.secrets.put(admin, "ml/serving/api_key", CANARY.encode(),
                      description="model serving API key", owner="ml-platform")
    vault.secrets.put(admin, "ml/registry/token", b"registry-canary-" + secrets.token_hex(6)
                      .encode(), description="model registry token", owner="ml-platform")
    vault.secrets.put(admin, "teams/vision/ml/feature_db", b"feature-canary-" +
                      secrets.token_hex(6).encode(), owner="vision")
    vault.rotation.set_policy(admin, "ml/serving/api_key", RotationPolicy("30d", "random"),
                              next_due=utcnow() - timedelta(days=2))  # overdue
    vault.rotation.set_policy(admin, "ml/registry/token", RotationPolicy("7d", "random"))
    vault.rotation.rotate(admin, "ml/registry/token")  # a rotation in its history
    rotated = vault.secrets.read(admin, "ml/registry/token", reason="in a test").decode()
    vault.access.create_principal(admin, "airflow-user:alice", "security_engineer")
    vault.access.create_principal(admin, "airflow-user:bob", "auditor")
    vault.access.create_principal(admin, "airflow-user:dave", "viewer")
    vault.access.grant(admin, "airflow-user:dave", "ml/**", ["list"])
    token = vault.access.create_principal(admin, "dag:train_model", "pipeline")
    vault.access.grant(admin, "dag:train_model", "ml/**", ["inject"])
    vault.access.grant(admin, "dag:train_model", "ml/registry/**", ["inject"], deny=True)
    task = Caller(token, {"dag_id": "train_model", "task_id": "fit", "component": "test"})
    vault.secrets.inject(task, "ml/serving/api_key")
    with pytest.raises(AccessDenied):
        vault.secrets.inject(task, "ml/registry/token")  # a denial on the timeline
    # a break-glass read asked for by one security engineer and waiting for another, and
    # one approved (its window open)
    vault.secrets.put(admin, "prod/payments/db_password", CRITICAL_CANARY.encode(),
                      description="payments database", owner="payments")
    vault.break_glass.set_critical(admin, add=("prod/**",))
    eve = Caller(vault.access.create_principal(admin, "eve", "security_engineer"),
                 {"component": "test"})
    vault.break_glass.request(eve, "prod/payments/db_password", INCIDENT, "30m")
    opened = vault.break_glass.request(eve, "prod/payments/db_password",
                                       "rotate the payments password by hand")
    vault.break_glass.approve(admin, opened.id)
    vault.audit.verify(admin)
    # the read of ml/registry/token above is a person's read: an open human_read alert
    vault.alerts.run_pass()
    raised = vault.alerts.list(admin, open_only=True)
    assert ("human_read", "ml/registry/token") in {(a.rule, a.path) for a in raised}

    port = free_port()
    url = f"http://127.0.0.1:{port}{PREFIX}"
    env = {**airflow_env.env, "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{url}/execution/",
           "AIRFLOW__API__BASE_URL": url,
           "AIRFLOW__SECRETS__BACKEND": BACKEND,
           "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": USERS}
    base = tmp_path_factory.mktemp("console")
    log = base / "api-server.log"
    with log.open("wb") as out:
        server = subprocess.Popen([sys.executable, "-m", "airflow", "api-server", "--host",
                                   "127.0.0.1", "--port", str(port)], env=env, stdout=out,
                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        wait_for(f"{url}/api/v2/monitor/health", server, "the Airflow API server")
        passwords = json.loads((airflow_env.home /
                                "simple_auth_manager_passwords.json.generated").read_text())
        shots = base / "screenshots"
        shots.mkdir()
        schema = httpx.get(f"{url}/mlsecrets/v1/openapi.json", timeout=30).json()
        cli_env = {**airflow_env.env, "MLSECRETS_TOKEN": str(admin.token)}
        yield Console(url=url, passwords=passwords,
                      canaries=(CANARY, PASSWORD, rotated, CRITICAL_CANARY),
                      shots=shots, routes=set(schema["paths"]), cli_env=cli_env)
    finally:
        server.terminate()
        server.wait(timeout=30)
        if ARTIFACTS.parent.exists() or os.access(ROOT, os.W_OK):
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            for shot in (base / "screenshots").glob("*.png"):
                shutil.copy(shot, ARTIFACTS / shot.name)


@pytest.fixture(scope="module")
def browser(console: Console) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as play:
        # root in CI: Chromium's sandbox needs user namespaces it may not have there
        chromium = play.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                        args=["--no-sandbox"])
        yield chromium
        chromium.close()


def sign_in(browser: Any, console: Console, user: str, dark: bool = False) -> Session:
    """A fresh browser context signed in as ``user`` through Airflow's login page; every
    response it receives is kept for the leak checks."""
    context = browser.new_context(viewport={"width": 1360, "height": 900},
                                  color_scheme="dark" if dark else "light",
                                  accept_downloads=True)
    context.set_default_timeout(TIMEOUT)
    session = Session(page=context.new_page())
    context.on("response", session.record)
    page = session.page
    page.goto(f"{console.url}/")
    page.wait_for_url("**/auth/login**")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", console.passwords[user])
    page.click("button[type=submit]")
    page.wait_for_url(lambda u: "/auth/login" not in u)
    return session


def open_console(page: Any) -> Any:
    """Open "Secrets" from Airflow's navigation; the console's frame."""
    page.get_by_role("link", name="Secrets").first.click()
    page.wait_for_url("**/plugin/secrets**")
    frame = page.frame_locator("iframe[title=Secrets]")
    frame.locator("#view").wait_for()
    idle(page)
    return frame


def console_frame(page: Any) -> Any:
    """The console's own frame (Airflow's page mirrors its path as /plugin/secrets/…)."""
    return next(f for f in page.frames
                if urllib.parse.urlsplit(f.url).path.startswith(f"{PREFIX}/mlsecrets/console/"))


CONSOLE_ROUTES = ("me", "inventory", "secrets/{path}", "principals", "principals/{name}",
                  "rotation", "audit", "audit/health", "audit/export", "keys", "activity", "age",
                  "reach", "alerts", "approvals")


def test_the_vault_publishes_every_route_the_console_reads(console: Console) -> None:
    missing = [r for r in CONSOLE_ROUTES if f"/v1/insight/{r}" not in console.routes]
    assert not missing and "/v1/review" in console.routes, missing


def idle(page: Any) -> None:
    """The console waits for no answer (it counts them on <body data-busy>)."""
    page.frame_locator("iframe[title=Secrets]").locator("body[data-busy='0']").wait_for(
        state="attached")


def show(page: Any, frame: Any, console: Console, tab: str,
         shot: str | None = None) -> None:
    frame.locator(f"#tabs a[data-tab={tab}]").click()
    idle(page)
    assert frame.locator(f"#tabs a[data-tab={tab}].active").count() == 1
    assert frame.locator("#refusal").count() == 0
    settle(page, console, shot or tab)


def settle(page: Any, console: Console, name: str) -> None:
    """Wait until the view has its answers, check it for values, keep its screenshot."""
    idle(page)
    no_leak(page, console, name)
    page.screenshot(path=str(console.shots / f"{name}.png"))


def no_leak(page: Any, console: Console, where: str) -> None:
    """No canary in the text or the DOM of the page or of any of its frames."""
    for frame in page.frames:
        dom = frame.content()
        text = frame.evaluate("() => document.body ? document.body.innerText : ''")
        for canary in console.canaries:
            assert canary not in dom, f"a secret value is in the DOM of {frame.url} ({where})"
            assert canary not in text, f"a secret value is shown on {frame.url} ({where})"


def no_value_or_token_sent(session: Session, console: Console) -> None:
    """No canary in any response the browser received (Airflow's included), and no token in
    any answer of the plugin, each of them uncached. Run before the context closes."""
    page = session.page
    # Airflow's session (the simple auth manager's login page sets it from its script, so it
    # is not HttpOnly here); the console's script never reads it (test_console_app)
    [cookie] = [c for c in page.context.cookies() if c["name"] == "_token"]
    frame = console_frame(page)
    assert cookie["value"] not in frame.content()
    stored = frame.evaluate("() => JSON.stringify([localStorage, sessionStorage])")
    assert cookie["value"] not in stored and not any(c in stored for c in console.canaries)
    checked = plugin = 0
    for response in session.responses:
        ours = urllib.parse.urlsplit(response.url).path.startswith(f"{PREFIX}/mlsecrets/")
        assert not (ours and response.lost), f"the body of {response.url} was not checked"
        assert not (ours and response.status >= 500 and "/v1/insight/activity" not in
                    response.url), f"{response.url} failed: {response.body!r}"
        if response.body is None:
            continue
        body = response.body
        checked += 1
        for canary in console.canaries:
            assert canary.encode() not in body, f"a secret value in the answer of {response.url}"
        if ours:
            plugin += 1
            assert cookie["value"].encode() not in body, f"a token in {response.url}"
            cache = {v.strip() for v in response.headers.get("cache-control", "").split(",")}
            assert cache == {"no-store"}, response.url
    assert checked > 10 and plugin > 5, (checked, plugin)


def test_a_security_engineer_clicks_through_every_view(browser: Any, console: Console) -> None:
    from playwright.sync_api import expect

    session = sign_in(browser, console, "alice")
    page = session.page
    frame = open_console(page)
    assert console_frame(page).evaluate("document.documentElement.dataset.theme") == "light"
    settle(page, console, "overview")
    failed = [r.url for r in session.responses if r.status >= 500]
    assert not failed, failed
    assert frame.locator(".chart canvas").count() == 3
    # the open alert and the request waiting are counted on the overview and on the tab
    frame.get_by_text("break-glass requests waiting").wait_for()
    assert int(frame.locator("#alert-count").inner_text()) >= 2  # >= 1 alert, 1 request

    show(page, frame, console, "inventory")
    frame.get_by_role("link", name="ml/registry/token").wait_for()
    frame.locator("#search").fill("serving")
    expect(frame.get_by_role("link", name="ml/registry/token")).to_have_count(0)
    expect(frame.get_by_role("link", name="ml/serving/api_key")).to_have_count(1)
    frame.locator("#state").select_option("overdue")  # the canary is overdue
    expect(frame.locator("tbody tr")).to_have_count(1)
    frame.locator("#search").fill("")
    frame.locator("#state").select_option("")
    frame.get_by_role("link", name="teams/vision/ml/feature_db").wait_for()
    assert frame.locator("tbody tr").count() >= 5
    settle(page, console, "inventory")
    frame.get_by_role("link", name="ml/serving/api_key").click()
    frame.get_by_role("heading", name="Who can reach it").wait_for()
    frame.get_by_role("link", name="dag:train_model").first.wait_for()
    settle(page, console, "secret")

    show(page, frame, console, "principals")
    frame.get_by_role("link", name="dag:train_model").click()
    frame.get_by_role("heading", name="Grants").wait_for()
    settle(page, console, "principal")

    show(page, frame, console, "rotation")
    assert frame.locator("tr.denied").count() >= 1  # the overdue secret stands out

    show(page, frame, console, "alerts")
    alert = frame.locator("#open-alerts tbody tr", has_text="human_read").filter(
        has_text="ml/registry/token")
    expect(alert).to_have_count(1)
    assert "admin" in alert.inner_text() and "not sent" in alert.inner_text()
    assert "chain " in alert.inner_text() and "seq " in alert.inner_text()
    waiting = frame.locator("#approvals tbody tr", has_text=INCIDENT)
    expect(waiting).to_have_count(1)
    for shown in ("pending", "eve", "prod/payments/db_password", "30 min",
                  "waiting for a second engineer"):
        assert shown in waiting.inner_text(), shown
    opened = frame.locator("#approvals tbody tr", has_text="rotate the payments password")
    assert "approved" in opened.inner_text() and "admin" in opened.inner_text()
    assert "UTC" in opened.locator("td").nth(7).inner_text()  # open until
    # the console approves nothing: no control to, and one line saying where it is done
    assert frame.locator("#view button").count() == 0
    assert "approves nothing" in frame.locator("#approval-note").inner_text()
    settle(page, console, "alerts")

    show(page, frame, console, "audit")
    frame.locator("#f-outcome").select_option("denied")
    frame.locator("#apply").click()
    frame.locator("#timeline tr.denied").first.wait_for()
    idle(page)
    assert frame.locator("#timeline tbody tr:not(.denied)").count() == 0
    settle(page, console, "audit-denied")
    with page.expect_download() as download:
        frame.locator("#export").click()
    exported = Path(download.value.path()).read_text()
    assert "denied" in exported and not any(c in exported for c in console.canaries)

    show(page, frame, console, "keys")
    frame.get_by_text("mlsecrets-kek-").first.wait_for()

    frame.locator("#review").click()
    frame.locator("#review-download").wait_for()
    settle(page, console, "review")
    with page.expect_download() as download:
        frame.locator("#review-download").click()
    report = Path(download.value.path())
    assert not any(c in report.read_text() for c in console.canaries)
    verified = subprocess.run([sys.executable, "-m", "airflow_provider_mlsecrets.cli.main",
                               "review", "verify", str(report)], env=console.cli_env,
                              capture_output=True, text=True, timeout=120, check=False)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    no_value_or_token_sent(session, console)
    page.context.close()


def test_an_auditor_sees_the_console_in_airflows_dark_mode(browser: Any,
                                                           console: Console) -> None:
    session = sign_in(browser, console, "bob", dark=True)
    page = session.page
    frame = open_console(page)
    assert page.evaluate("document.documentElement.classList.contains('dark')")
    assert console_frame(page).evaluate("document.documentElement.dataset.theme") == "dark"
    assert frame.locator("#refusal").count() == 0
    settle(page, console, "auditor-dark-overview")
    show(page, frame, console, "inventory", shot="auditor-dark-inventory")
    frame.get_by_role("link", name="ml/serving/api_key").wait_for()
    show(page, frame, console, "audit", shot="auditor-dark-audit")
    show(page, frame, console, "alerts", shot="auditor-dark-alerts")
    frame.locator("#approvals tbody tr", has_text=INCIDENT).wait_for()
    no_value_or_token_sent(session, console)
    page.context.close()


def test_a_user_with_no_binding_is_refused_with_the_reason(browser: Any,
                                                           console: Console) -> None:
    session = sign_in(browser, console, "carol")
    page = session.page
    frame = open_console(page)
    refusal = frame.locator("#refusal")
    refusal.wait_for()
    text = refusal.inner_text()
    assert "The vault refused you" in text
    assert "airflow-user:carol" in text  # the vault's own words: who it looked for
    assert frame.locator("#tabs").is_hidden() and frame.locator("#review").is_hidden()
    settle(page, console, "refused")
    no_value_or_token_sent(session, console)
    page.context.close()


def test_a_viewer_sees_only_what_it_may_list(browser: Any, console: Console) -> None:
    from playwright.sync_api import expect

    session = sign_in(browser, console, "dave")
    page = session.page
    frame = open_console(page)
    # it opens on the inventory, not on an overview of refusals
    assert frame.locator("#tabs a.active").get_attribute("data-tab") == "inventory"
    frame.get_by_text("ml/serving/api_key").wait_for()
    expect(frame.locator("tbody tr")).to_have_count(2)  # ml/serving/api_key, ml/registry/token
    assert frame.get_by_text("connections/uri_db").count() == 0
    assert frame.get_by_role("link", name="ml/serving/api_key").count() == 0  # needs audit
    # the views it may not use are greyed out, and one line says why
    for tab in VIEWS:
        link = frame.locator(f"#tabs a[data-tab={tab}]")
        assert (link.get_attribute("aria-disabled") == "true") == (tab != "inventory"), tab
    assert frame.locator("#alert-count").is_hidden()  # not asked for: it needs audit
    limits = frame.locator("#limits")
    assert limits.is_visible() and "audit capability" in limits.inner_text()
    assert frame.locator("#review").is_hidden()
    frame.locator("#tabs a[data-tab=principals]").click(force=True)  # greyed: goes nowhere
    idle(page)
    assert frame.locator("#tabs a.active").get_attribute("data-tab") == "inventory"
    assert frame.locator("#refusal").count() == 0
    assert frame.get_by_text("does not let you see").count() == 0
    settle(page, console, "viewer-inventory")
    # nothing it may not see was asked for: the vault refused it nothing
    refused = [r.url for r in session.responses
               if "/mlsecrets/v1/" in r.url and r.status in (401, 403)]
    assert not refused, refused
    no_value_or_token_sent(session, console)
    page.context.close()

