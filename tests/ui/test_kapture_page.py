"""The Kapture page and the connection Test button, in headless Chromium against a real ``airflow api-server``.

Set up once for the module (nothing is mocked):

* a throw-away Airflow: its own ``AIRFLOW_HOME`` and SQLite metadata DB, the SimpleAuthManager in
  multi-team mode. Two DAG bundles belong to two teams: ``sales_orders_sync`` (team ``sales``; ledger in a
  database and table of its own through ``ledger_conn_id``; parks an order after 2 refusals) and
  ``ops_orders_sync`` (team ``ops``; ledger in its warehouse, the default). ``shared_sales_sync`` (sales)
  and ``shared_ops_sync`` (ops) share one ledger; ``broken_ledger_sync`` (ops) has a ledger whose file is
  overwritten with garbage after its run. Users: ``admin``; ``alice``, a viewer in team sales; ``carol``,
  a user (may edit DAGs) in team sales; ``bob``, a viewer in team ops;
* the real sync, run by ``airflow dags test`` against the Kapture emulator (in this process, on
  loopback): the sales DAG runs two hours; the emulator refuses order ``S1002`` both times (so it is
  parked) and ``S1006`` once (so it is owed); the other DAGs run one hour;
* ``airflow api-server`` serving the UI, the REST API and the page (the plugin comes from the installed
  package's entry point, as after ``pip install``), with ``[core] test_connection = Enabled``.

Chromium (Debian's, driven through Debian's chromedriver; nothing is downloaded) logs in through
Airflow's login form, as a user would. Screenshots go to ``$KAPTURE_SCREENSHOTS`` (default: the
temporary directory's ``kapture-page``).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from itsdangerous import URLSafeTimedSerializer
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from kapture_provider.compat import AIRFLOW_V_3_2_PLUS
from kapture_provider.testing.emulator import SEARCH_PATH, Fault, KaptureEmulator
from kapture_provider.testing.warehouse import insert_orders

pytestmark = [
    pytest.mark.system,
    pytest.mark.skipif(not AIRFLOW_V_3_2_PLUS, reason="per-DAG access with the SimpleAuthManager needs multi-team"),
    pytest.mark.timeout(600),  # the first test's includes setting the deployment up
    pytest.mark.system,
]

AIRFLOW = str(Path(sys.executable).parent / "airflow")
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
USERS = {"admin": ("admin", None), "alice": ("viewer", "sales"), "carol": ("user", "sales"), "bob": ("viewer", "ops")}
PASSWORD = "kapture-ui-test"
SALES_DAG, OPS_DAG = "sales_orders_sync", "ops_orders_sync"
SHARED_SALES_DAG, SHARED_OPS_DAG, BROKEN_DAG = "shared_sales_sync", "shared_ops_sync", "broken_ledger_sync"
SALES_LEDGER_TABLE, SHARED_TABLE = "sales_kapture_ledger", "shared_kapture_ledger"
PARKED = "S1002"  # refused in both sales runs: parked after the second
OWED = "S1006"  # refused once, in the second sales run
SECRET_KEY = "kapture-ui-test-secret-key"
#: The runs made: an hourly run at T syncs the hour before T.
LOGICAL_DATES = {
    SALES_DAG: ["2026-11-26T02:00:00+00:00", "2026-11-26T03:00:00+00:00"],
    OPS_DAG: ["2026-11-26T02:00:00+00:00"],
    SHARED_SALES_DAG: ["2026-11-26T02:00:00+00:00"],
    SHARED_OPS_DAG: ["2026-11-26T02:00:00+00:00"],
    BROKEN_DAG: ["2026-11-26T02:00:00+00:00"],
}
#: team, warehouse connection and the operator's ledger arguments of each DAG
DAGS: dict[str, tuple[str, str, dict[str, Any]]] = {
    SALES_DAG: (
        "sales", "sales_warehouse",
        {"ledger_conn_id": "sales_ledger", "ledger_table": SALES_LEDGER_TABLE, "park_after_refusals": 2},
    ),
    OPS_DAG: ("ops", "ops_warehouse", {}),
    SHARED_SALES_DAG: ("sales", "sales_warehouse", {"ledger_conn_id": "shared_ledger", "ledger_table": SHARED_TABLE}),
    SHARED_OPS_DAG: ("ops", "ops_warehouse", {"ledger_conn_id": "shared_ledger", "ledger_table": SHARED_TABLE}),
    BROKEN_DAG: ("ops", "ops_warehouse", {"ledger_conn_id": "broken_ledger"}),
}  # fmt: skip
SCREENSHOTS = Path(os.environ.get("KAPTURE_SCREENSHOTS") or Path(tempfile.gettempdir()) / "kapture-page")

DAG_FILE = '''"""An Airflow DAG of the Kapture page test."""
import pendulum
from kapture_provider.compat import DAG, CronDataIntervalTimetable
from kapture_provider.transfers.sql_to_kapture import SqlToKaptureOrdersOperator

with DAG(
    dag_id={dag_id!r},
    schedule=CronDataIntervalTimetable("0 * * * *", timezone="UTC"),
    start_date=pendulum.datetime(2026, 11, 1, tz="UTC"),
    catchup=False,
):
    SqlToKaptureOrdersOperator(
        task_id="sync",
        sql_conn_id={warehouse!r},
        sql="""SELECT order_id, customer_name, phone, email AS email_id, city, updated_at AS _version
               FROM erp_orders WHERE updated_at >= :start AND updated_at < :end""",
        window_parameters=("start", "end"),
        version_column="_version",
        max_failed_ratio=1.0,  # the refused order is this test's subject, not a reason to fail the run
        **{extra!r},
    )
'''


def order(order_id: str, n: int, updated_at: str) -> tuple[Any, ...]:
    """A warehouse row with personal values unique to it (each is searched for in the page and the JSON)."""
    return (
        order_id, f"Quintessa Zorawar{n}", f"90123456{n:02d}", f"quintessa.zorawar{n}@example.org", "Pune",
        f"INV-{order_id}", "2026-11-20", "Placed", "UPI", "1234.50", updated_at,
    )  # fmt: skip


SALES_ORDERS = [
    order("S1001", 1, "2026-11-26 01:10:00"), order("S1002", 2, "2026-11-26 01:20:00"),
    order("S1003", 3, "2026-11-26 01:30:00"), order("S1004", 4, "2026-11-26 01:40:00"),
    order("S1005", 5, "2026-11-26 02:10:00"), order("S1006", 6, "2026-11-26 02:20:00"),
]  # fmt: skip
OPS_ORDERS = [order("P2001", 7, "2026-11-26 01:15:00"), order("P2002", 8, "2026-11-26 01:45:00")]
PERSONAL_VALUES = [value for row in SALES_ORDERS + OPS_ORDERS for value in row[1:4]]


# --------------------------------------------------------------------------------------------------
# The deployment: Airflow home, DAG runs, API server
# --------------------------------------------------------------------------------------------------


@dataclass
class Deployment:
    url: str
    home: Path
    emulator: KaptureEmulator
    env: dict[str, str]

    def metadata(self, sql: str, parameters: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with sqlite3.connect(self.home / "airflow.db") as conn:
            return conn.execute(sql, parameters).fetchall()

    def ledger(self, dag_id: str) -> dict[str, dict[str, Any]]:
        path, table = {
            SALES_DAG: (self.home / "sales_ledger.db", SALES_LEDGER_TABLE),
            OPS_DAG: (self.home / "ops.db", "kapture_order_sync_ledger"),
            SHARED_OPS_DAG: (self.home / "shared_ledger.db", SHARED_TABLE),
        }[dag_id]
        with sqlite3.connect(path) as conn:
            conn.row_factory = sqlite3.Row
            return {row["order_id"]: dict(row) for row in conn.execute(f"SELECT * FROM {table}")}

    def summaries(self, dag_id: str) -> dict[str, dict[str, Any]]:
        """run id -> the summary the sync task returned (its XCom), read from the metadata DB."""
        rows = self.metadata("SELECT run_id, value FROM xcom WHERE dag_id = ? AND key = 'return_value'", (dag_id,))
        return {run_id: json.loads(value) for run_id, value in rows}

    def token(self, user: str) -> str:
        request = urllib.request.Request(
            f"{self.url}/auth/token",
            data=json.dumps({"username": user, "password": PASSWORD}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as answer:
            return str(json.load(answer)["access_token"])

    def call(self, method: str, path: str, token: str | None = None, body: Any = None) -> tuple[int, Any]:
        """An HTTP request to the API server; (status, parsed JSON or text)."""
        headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {token}"} if token else {})
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.url}{path}", data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=60) as answer:
                status, text = answer.status, answer.read().decode()
        except urllib.error.HTTPError as err:
            status, text = err.code, err.read().decode()
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text

    def post_form(self, path: str, token: str, fields: dict[str, str]) -> tuple[int, str]:
        """A form POST (as a browser sends it) with a bearer token; (status, text). Redirects are not followed."""
        request = urllib.request.Request(
            f"{self.url}{path}",
            data=urllib.parse.urlencode(fields).encode(),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/x-www-form-urlencoded"},
            method="POST",
        )
        opener = urllib.request.build_opener(NoRedirects)
        try:
            with opener.open(request, timeout=60) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()


class NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def csrf_token(user: str) -> str:
    """The retry form's CSRF token as the page gives it to ``user`` (signed with the API server's secret key)."""
    return URLSafeTimedSerializer(SECRET_KEY, salt="kapture-page-retry").dumps(user)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _airflow_env(home: Path, emulator: KaptureEmulator, port: int) -> dict[str, str]:
    bundles = [
        {"name": team, "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
         "kwargs": {"path": str(home / team)}, "team_name": team}
        for team in ("sales", "ops")
    ]  # fmt: skip
    sqlite = {"conn_type": "sqlite"}
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}  # not this process's test home
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__CORE__MULTI_TEAM": "True",
            "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST": json.dumps(bundles),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(
                f"{user}:{role}" + (f":{team}" if team else "") for user, (role, team) in USERS.items()
            ),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
            "AIRFLOW__CORE__TEST_CONNECTION": "Enabled",
            "AIRFLOW__API_AUTH__JWT_SECRET": "kapture-ui-test-jwt-secret",
            "AIRFLOW__API__SECRET_KEY": SECRET_KEY,
            "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
            "AIRFLOW_CONN_SALES_WAREHOUSE": json.dumps({**sqlite, "host": str(home / "sales.db")}),
            "AIRFLOW_CONN_SALES_LEDGER": json.dumps({**sqlite, "host": str(home / "sales_ledger.db")}),
            "AIRFLOW_CONN_OPS_WAREHOUSE": json.dumps({**sqlite, "host": str(home / "ops.db")}),
            "AIRFLOW_CONN_SHARED_LEDGER": json.dumps({**sqlite, "host": str(home / "shared_ledger.db")}),
            "AIRFLOW_CONN_BROKEN_LEDGER": json.dumps({**sqlite, "host": str(home / "broken_ledger.db")}),
            "AIRFLOW_CONN_KAPTURE_DEFAULT": emulator.connection_json(max_retries=0),
            "SE_OFFLINE": "true",
        }
    )
    return env


def _run(env: dict[str, str], *args: str) -> None:
    done = subprocess.run([AIRFLOW, *args], env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, f"airflow {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


def _prepare(home: Path, env: dict[str, str]) -> None:
    """Users, DAG files and warehouses; the metadata DB, the teams and the serialized DAGs."""
    (home / "passwords.json").write_text(json.dumps(dict.fromkeys(USERS, PASSWORD)))
    for team, rows in (("sales", SALES_ORDERS), ("ops", OPS_ORDERS)):
        (home / team).mkdir()
        with sqlite3.connect(home / f"{team}.db") as conn:
            insert_orders(conn, rows)
        conn.close()
    for dag_id, (team, warehouse, extra) in DAGS.items():
        (home / team / f"{dag_id}.py").write_text(DAG_FILE.format(dag_id=dag_id, warehouse=warehouse, extra=extra))
    _run(env, "db", "migrate")
    for team in ("sales", "ops"):
        _run(env, "teams", "create", team)
    _run(env, "dags", "reserialize")


@pytest.fixture(scope="module")
def deployment() -> Iterator[Deployment]:
    for program in (CHROMIUM, CHROMEDRIVER):
        assert Path(program).exists(), f"{program} is needed (Debian packages chromium and chromium-driver)"
    home = Path(tempfile.mkdtemp(prefix="kapture-ui-"))
    port = _free_port()
    with KaptureEmulator() as emulator:
        env = _airflow_env(home, emulator, port)
        _prepare(home, env)
        emulator.script_for_order(PARKED, Fault.FAILED_BODY, Fault.FAILED_BODY)  # refused in both sales runs
        emulator.script_for_order(OWED, Fault.FAILED_BODY)
        for dag_id, dates in LOGICAL_DATES.items():
            for logical_date in dates:
                _run(env, "dags", "test", dag_id, logical_date)
        (home / "broken_ledger.db").write_bytes(b"not a database " * 512)  # its ledger can no longer be read
        with open(home / "api-server.log", "wb") as log:
            server = subprocess.Popen(
                [AIRFLOW, "api-server", "--port", str(port)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: its workers are stopped with it
            )
        try:
            url = f"http://127.0.0.1:{port}"
            _wait_until_healthy(url, server, home / "api-server.log")
            yield Deployment(url, home, emulator, env)
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
    shutil.rmtree(home, ignore_errors=True)


def _wait_until_healthy(url: str, server: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert server.poll() is None, f"the API server exited:\n{log.read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(f"{url}/api/v2/monitor/health", timeout=5):
                return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"the API server did not answer in 120 s:\n{log.read_text()[-3000:]}")


# --------------------------------------------------------------------------------------------------
# The browser
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser(deployment: Deployment) -> Iterator[Any]:

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="kapture-chromium-")
    for flag in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--window-size=1400,1000", f"--user-data-dir={profile}",
    ):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait(driver: Any, condition: Any) -> Any:
    """``condition(driver)`` once it is truthy; the UI re-renders, so elements going stale meanwhile are retried."""
    return WebDriverWait(driver, 30, ignored_exceptions=(StaleElementReferenceException,)).until(condition)


def click(driver: Any, css: str, text: str) -> None:
    """Click the element matching ``css`` whose text is ``text``, once the UI shows it."""

    def clicked(d: Any) -> bool:
        element = next((e for e in d.find_elements(By.CSS_SELECTOR, css) if e.text.strip() == text), None)
        if element is None:
            return False
        element.click()
        return True

    wait(driver, clicked)


def log_in(driver: Any, deployment: Deployment, user: str, then: str) -> None:
    """Log in through Airflow's login form (after forgetting any earlier session), landing on ``then``."""
    driver.get(f"{deployment.url}/auth/login")
    driver.delete_all_cookies()
    driver.get(f"{deployment.url}/auth/login?next={deployment.url}{then}")
    wait(driver, lambda d: d.find_elements(By.NAME, "username"))
    driver.find_element(By.NAME, "username").send_keys(user)
    driver.find_element(By.NAME, "password").send_keys(PASSWORD)
    driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait(driver, lambda d: d.current_url.startswith(f"{deployment.url}{then}"))


def page_data(driver: Any) -> dict[str, dict[str, Any]]:
    """What the Kapture page shows: dag id -> owed total, owed orders, and each run's row."""

    shown: dict[str, dict[str, Any]] = {}
    for section in driver.find_elements(By.CSS_SELECTOR, "section.sync"):
        owed = {
            row.get_attribute("data-order-id"): [cell.text for cell in row.find_elements(By.TAG_NAME, "td")]
            for row in section.find_elements(By.CSS_SELECTOR, "table.owed tbody tr")
        }
        runs = {
            row.get_attribute("data-run-id"): {
                cell.get_attribute("data-field"): cell.text
                for cell in row.find_elements(By.CSS_SELECTOR, "td[data-field]")
            }
            for row in section.find_elements(By.CSS_SELECTOR, "table.runs tbody tr")
        }
        total = section.find_element(By.CSS_SELECTOR, "[data-field=owed-total]").text
        parked = section.find_element(By.CSS_SELECTOR, "[data-field=parked-total]").text
        error = [e.text for e in section.find_elements(By.CSS_SELECTOR, "[data-field=owed-error]")]
        buttons = section.find_elements(By.CSS_SELECTOR, "form.retry, form.retry-all")
        bars: dict[str, list[int]] = {}
        for bar in section.find_elements(By.CSS_SELECTOR, "svg.chart rect.bar"):
            series = next(c for c in bar.get_attribute("class").split() if c != "bar")
            bars.setdefault(series, []).append(int(bar.get_attribute("data-value")))
        shown[section.get_attribute("data-dag-id")] = {
            "owed_total": total, "parked_total": parked, "owed": owed, "runs": runs,
            "error": error[0] if error else None, "retry_buttons": len(buttons), "chart": bars,
        }  # fmt: skip
    return shown


def browser_json(driver: Any, deployment: Deployment) -> tuple[str, Any]:
    """The page's JSON as the logged-in browser gets it (its text, and parsed)."""

    driver.get(f"{deployment.url}/kapture/api/syncs")
    text = driver.find_element(By.TAG_NAME, "pre").text
    return text, json.loads(text)


def assert_no_personal_data(text: str) -> None:
    leaked = [value for value in PERSONAL_VALUES if value in text]
    assert not leaked, f"personal data on the page: {leaked}"


# --------------------------------------------------------------------------------------------------
# The Kapture page
# --------------------------------------------------------------------------------------------------


def screenshot(driver: Any, name: str) -> Path:
    """Save what the browser shows (the whole page's height) as ``name``.png in :data:`SCREENSHOTS`."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1400, max(1000, min(int(height) + 40, 4000)))
    path = SCREENSHOTS / f"{name}.png"
    driver.save_screenshot(str(path))
    driver.set_window_size(1400, 1000)
    return path


def test_anonymous_browser_is_sent_to_the_login_page_and_api_clients_are_refused(
    deployment: Deployment, browser: Any
) -> None:
    for path in ("/kapture/", "/kapture/api/syncs"):
        status, body = deployment.call("GET", path)
        assert status == 401, (path, status, body)
        status, body = deployment.call("GET", path, token="not-a-valid-token")
        assert status == 403, (path, status, body)
    status, _ = deployment.post_form("/kapture/retry", "", {"dag_id": SALES_DAG, "task_id": "sync"})
    assert status == 401

    browser.get(f"{deployment.url}/auth/login")
    browser.delete_all_cookies()
    browser.get(f"{deployment.url}/kapture/?order_id={PARKED}")
    wait(browser, lambda d: d.find_elements(By.NAME, "username"))  # Airflow's login form
    screenshot(browser, "anonymous")
    assert browser.current_url.startswith(f"{deployment.url}/auth/login")
    assert "Not authenticated" not in browser.page_source
    assert SALES_DAG not in browser.page_source and PARKED not in browser.page_source
    # once logged in, the login page sends the browser back to the page it asked for
    browser.find_element(By.NAME, "username").send_keys("alice")
    browser.find_element(By.NAME, "password").send_keys(PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "section.found"))
    assert browser.current_url.startswith(f"{deployment.url}/kapture/")


def test_page_in_the_ui_shows_runs_and_owed_orders_matching_the_ledger_and_summaries(
    deployment: Deployment, browser: Any
) -> None:

    log_in(browser, deployment, "alice", "/dags")
    click(browser, "button", "Browse")
    click(browser, "[role=menuitem]", "Kapture")
    frame = wait(browser, lambda d: d.find_elements(By.TAG_NAME, "iframe"))[0]
    browser.switch_to.frame(frame)
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "section.sync"))
    shown = page_data(browser)
    browser.switch_to.default_content()
    screenshot(browser, "alice-in-the-ui")

    assert set(shown) == {SALES_DAG, SHARED_SALES_DAG}  # alice may read the sales team's DAGs only
    ledger = deployment.ledger(SALES_DAG)
    owed = {order_id: row for order_id, row in ledger.items() if row["status"] in ("failed", "parked")}
    delivered = {order_id for order_id, row in ledger.items() if row["status"] == "delivered"}
    assert {k: v["status"] for k, v in owed.items()} == {PARKED: "parked", OWED: "failed"}
    assert delivered == {"S1001", "S1003", "S1004", "S1005"}
    sales = shown[SALES_DAG]
    assert (sales["owed_total"], sales["parked_total"], sales["error"]) == ("1", "1", None)
    assert sales["retry_buttons"] == 0  # a viewer may not retry
    order_id, status, attempts, refusals, failing_since, last_failure, last_error = sales["owed"][PARKED]
    assert (order_id, status, attempts, refusals) == (PARKED, "parked", str(owed[PARKED]["attempts"]), "2")
    assert attempts == "2"
    assert last_failure == owed[PARKED]["last_attempt_at"] and last_error == owed[PARKED]["last_error"]
    assert failing_since == owed[PARKED]["first_seen_at"]  # never delivered: failing since it was first seen
    assert "Order Updation Failed" in last_error
    assert sales["owed"][OWED][1:4] == ["failed", "1", "1"]

    summaries = deployment.summaries(SALES_DAG)
    assert len(summaries) == 2 and set(sales["runs"]) == set(summaries)
    for run_id, summary in summaries.items():
        row = sales["runs"][run_id]
        for field in ("rows_read", "to_send", "succeeded", "failed", "invalid", "retried", "requests"):
            assert row[field] == str(summary[field]), (run_id, field)
        assert row["orders_per_second"] == str(summary["orders_per_second"])
        window = summary["window"]  # the hour the run synced
        assert row["window"].startswith(
            f"{window['start'][:16].replace('T', ' ')} – {window['end'][:16].replace('T', ' ')}"
        )
        ((state,),) = deployment.metadata(
            "SELECT state FROM task_instance WHERE dag_id = ? AND run_id = ?", (SALES_DAG, run_id)
        )
        assert row["state"] == state
    first, second = sorted(summaries.values(), key=lambda s: s["retried"])
    assert (first["rows_read"], first["succeeded"], first["failed"]) == (4, 3, 1)
    assert (second["rows_read"], second["retried"], second["succeeded"], second["failed"]) == (2, 1, 1, 2)
    assert second["parked"] == 1


def test_chart_shows_delivered_refused_and_owed_per_run(deployment: Deployment, browser: Any) -> None:
    log_in(browser, deployment, "alice", "/kapture/")
    chart = page_data(browser)[SALES_DAG]["chart"]
    svg = browser.find_element(By.CSS_SELECTOR, f"section[data-dag-id={SALES_DAG}] svg.chart")
    browser.execute_script("arguments[0].scrollIntoView()", svg)
    screenshot(browser, "chart")

    runs = sorted(deployment.summaries(SALES_DAG).values(), key=lambda s: s["window"]["start"])  # oldest first
    assert chart == {
        "delivered": [s["succeeded"] for s in runs],
        "refused": [s["failed"] for s in runs],
        "owed": [s["still_owed"] for s in runs],
    }
    assert chart == {"delivered": [3, 1], "refused": [1, 2], "owed": [1, 1]}
    heights = {
        bar.get_attribute("data-value"): float(bar.get_attribute("height"))
        for bar in svg.find_elements(By.CSS_SELECTOR, "rect.bar")
    }
    assert heights["3"] > heights["2"] > heights["1"] > 0  # drawn to scale


def test_page_and_json_carry_no_personal_data(deployment: Deployment, browser: Any) -> None:
    log_in(browser, deployment, "admin", "/kapture/")
    html = browser.page_source
    screenshot(browser, "admin")
    text, data = browser_json(browser, deployment)

    dag_ids = {sync["task"]["dag_id"] for sync in data["syncs"]}
    assert {SALES_DAG, OPS_DAG, SHARED_SALES_DAG, SHARED_OPS_DAG} <= dag_ids  # the admin reads them all
    assert PARKED in html and PARKED in text
    assert_no_personal_data(html)
    assert_no_personal_data(text)
    assert "pending_body" not in text and "customer_info" not in html + text


def test_lookup_shows_one_order_without_personal_data(deployment: Deployment, browser: Any) -> None:
    log_in(browser, deployment, "alice", f"/kapture/?order_id={PARKED}")
    found = wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, "section.found"))
    screenshot(browser, "lookup")
    html = browser.page_source
    fields = {
        cell.get_attribute("data-field"): cell.text
        for cell in found.find_elements(By.CSS_SELECTOR, f"table.order[data-dag-id={SALES_DAG}] td[data-field]")
    }

    row = deployment.ledger(SALES_DAG)[PARKED]
    assert fields["status"] == "parked" and fields["attempts"] == "2" and fields["refusals"] == "2"
    assert fields["last_error"] == row["last_error"] and "Order Updation Failed" in fields["last_error"]
    assert fields["delivered_at"] == "never" and fields["last_attempt_at"] == row["last_attempt_at"]
    assert_no_personal_data(html)
    assert "INV-S1002" not in html  # nor anything else of its body

    log_in(browser, deployment, "alice", "/kapture/?order_id=S1001")
    delivered = {
        cell.get_attribute("data-field"): cell.text
        for cell in browser.find_elements(By.CSS_SELECTOR, f"table.order[data-dag-id={SALES_DAG}] td[data-field]")
    }
    assert delivered["status"] == "delivered"
    assert delivered["delivered_at"] == deployment.ledger(SALES_DAG)["S1001"]["delivered_at"]


def test_ledger_shared_with_dags_a_user_may_not_read_is_hidden(deployment: Deployment, browser: Any) -> None:
    log_in(browser, deployment, "bob", "/kapture/")
    shown = page_data(browser)
    screenshot(browser, "bob")
    html = browser.page_source
    text, data = browser_json(browser, deployment)
    _, api = deployment.call("GET", "/kapture/api/syncs", token=deployment.token("bob"))

    assert set(shown) == {OPS_DAG, SHARED_OPS_DAG, BROKEN_DAG}
    assert shown[OPS_DAG]["owed_total"] == "0" and shown[OPS_DAG]["error"] is None
    (run,) = shown[OPS_DAG]["runs"].values()
    assert run["succeeded"] == "2" and run["failed"] == "0"
    # bob may read shared_ops_sync, but its ledger is shared with the sales team's shared_sales_sync
    assert deployment.ledger(SHARED_OPS_DAG)  # which holds orders of both teams
    assert (
        shown[SHARED_OPS_DAG]["error"]
        == "This ledger is shared with DAGs you may not read, so its orders are not shown."
    )
    assert shown[SHARED_OPS_DAG]["owed"] == {} and shown[SHARED_OPS_DAG]["owed_total"] == "?"
    assert (
        sorted(s["task"]["dag_id"] for s in data["syncs"])
        == sorted(shown)
        == sorted(s["task"]["dag_id"] for s in api["syncs"])
    )
    for sales_trace in (SALES_DAG, SHARED_SALES_DAG, SALES_LEDGER_TABLE, "sales_ledger",
                        *(row[0] for row in SALES_ORDERS)):  # fmt: skip
        assert sales_trace not in html and sales_trace not in text
    log_in(browser, deployment, "bob", "/kapture/?order_id=S1001")
    assert "S1001" not in browser.find_element(By.CSS_SELECTOR, "section.found").text.replace("Order S1001", "")

    log_in(browser, deployment, "admin", "/kapture/")
    shared = page_data(browser)[SHARED_OPS_DAG]
    assert shared["error"] is None and shared["owed_total"] == "0"  # the admin reads both DAGs


def test_unreadable_ledger_is_one_sentence_for_viewers_and_the_full_error_in_the_server_log(
    deployment: Deployment, browser: Any
) -> None:
    log_in(browser, deployment, "bob", "/kapture/")
    shown = page_data(browser)[BROKEN_DAG]
    html = browser.page_source

    assert shown["error"] == "The ledger could not be read; the API server's log has the error."
    assert "not a database" not in html and "broken_ledger.db" not in html and "Traceback" not in html
    server_log = (deployment.home / "api-server.log").read_text()
    assert "cannot read the ledger kapture_order_sync_ledger through connection 'broken_ledger'" in server_log
    assert "file is not a database" in server_log  # the driver's error, with its traceback, for admins


def test_retry_form_without_a_valid_csrf_token_is_refused(deployment: Deployment) -> None:
    carol = deployment.token("carol")
    fields = {"dag_id": SALES_DAG, "task_id": "sync", "order_id": PARKED}
    for token in (None, "forged", csrf_token("alice")):  # missing, made up, and another user's
        status, text = deployment.post_form("/kapture/retry", carol, fields | ({"csrf_token": token} if token else {}))
        assert status == 403 and "CSRF" in text, (token, status, text)
    assert deployment.ledger(SALES_DAG)[PARKED]["status"] == "parked"


def test_viewer_may_not_retry(deployment: Deployment, browser: Any) -> None:
    log_in(browser, deployment, "alice", "/kapture/")
    assert page_data(browser)[SALES_DAG]["retry_buttons"] == 0

    fields = {"dag_id": SALES_DAG, "task_id": "sync", "order_id": PARKED, "csrf_token": csrf_token("alice")}
    status, text = deployment.post_form("/kapture/retry", deployment.token("alice"), fields)
    assert status == 403 and "edit" in text, (status, text)
    fields = {"dag_id": SALES_DAG, "task_id": "sync", "csrf_token": csrf_token("bob")}  # a DAG bob cannot read
    status, _ = deployment.post_form("/kapture/retry", deployment.token("bob"), fields)
    assert status == 404
    assert deployment.ledger(SALES_DAG)[PARKED]["status"] == "parked"


def test_operator_retries_a_parked_order_and_the_next_run_delivers_it(deployment: Deployment, browser: Any) -> None:
    emulator = deployment.emulator
    log_in(browser, deployment, "carol", "/kapture/")
    section = f"section[data-dag-id={SALES_DAG}]"
    assert page_data(browser)[SALES_DAG]["retry_buttons"] == 2  # the parked order's, and "Retry all 1 parked"
    screenshot(browser, "carol-before-retry")
    sent_before = len([r for r in emulator.requests if r.order_id == PARKED])
    clicked_at = time.time()

    browser.find_element(By.CSS_SELECTOR, f"{section} tr[data-order-id={PARKED}] form.retry button").click()
    message = wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "[data-field=retried]"))[0].text
    screenshot(browser, "carol-after-retry")

    assert message == "1 parked order owed again: the next run sends it."
    row = deployment.ledger(SALES_DAG)[PARKED]
    assert (row["status"], row["refusals"]) == ("failed", 0)  # owed: every run retries it
    with sqlite3.connect(deployment.home / "sales_ledger.db") as conn:
        actions = conn.execute(f"SELECT actor, action, order_id, acted_at FROM {SALES_LEDGER_TABLE}_actions").fetchall()
    assert [a[:3] for a in actions] == [("carol", "retry", PARKED)]
    assert actions[0][3] >= dt.datetime.fromtimestamp(clicked_at - 1, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    assert len([r for r in emulator.requests if r.order_id == PARKED]) == sent_before  # nothing sent by the page

    _run(deployment.env, "dags", "test", SALES_DAG, "2026-11-26T04:00:00+00:00")  # the next run

    sent = [r for r in emulator.requests if r.order_id == PARKED][sent_before:]
    assert [r.status for r in sent] == [200] and sent[0].stored  # the emulator received it, once
    assert deployment.ledger(SALES_DAG)[PARKED]["status"] == "delivered"
    browser.get(f"{deployment.url}/kapture/?order_id={PARKED}")
    fields = {
        cell.get_attribute("data-field"): cell.text
        for cell in browser.find_elements(By.CSS_SELECTOR, f"table.order[data-dag-id={SALES_DAG}] td[data-field]")
    }
    screenshot(browser, "carol-lookup-after-the-run")
    assert fields["status"] == "delivered" and fields["last_retry"].startswith("by carol at ")
    assert fields["delivered_at"] == deployment.ledger(SALES_DAG)[PARKED]["delivered_at"]


# --------------------------------------------------------------------------------------------------
# The connection form and the Test button
# --------------------------------------------------------------------------------------------------


def test_connection_made_in_the_form_passes_the_test_button(deployment: Deployment, browser: Any) -> None:

    conn_id, emulator = "kapture_from_the_form", deployment.emulator
    log_in(browser, deployment, "admin", "/connections")
    click(browser, "button", "Add Connection")
    dialog = wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, "[role=dialog]"))
    dialog.find_element(By.NAME, "connection_id").send_keys(conn_id)
    conn_type = dialog.find_element(By.CSS_SELECTOR, "input[role=combobox]")
    conn_type.send_keys("Kapture CRM")
    wait(browser, lambda d: "Kapture CRM" in d.find_element(By.CSS_SELECTOR, "[role=listbox]").text)
    conn_type.send_keys(Keys.ENTER)
    wait(browser, lambda d: d.find_elements(By.NAME, "port"))
    for name, value in (
        ("host", "http://127.0.0.1"), ("port", str(emulator.port)),
        ("login", emulator.config["username"]), ("password", emulator.config["password"]),
    ):  # fmt: skip
        dialog.find_element(By.NAME, name).send_keys(value)
    click(browser, "[role=dialog] button", "Save")
    row = wait(
        browser, lambda d: next((r for r in d.find_elements(By.CSS_SELECTOR, "tbody tr") if conn_id in r.text), None)
    )

    status, stored = deployment.call("GET", f"/api/v2/connections/{conn_id}", token=deployment.token("admin"))
    assert status == 200 and stored["port"] == emulator.port
    extra = json.loads(stored["extra"])
    network = {"proxy", "ca_bundle", "client_cert", "client_key", "client_key_password"}  # unset by default
    assert extra and None not in [v for k, v in extra.items() if k not in network], extra  # the hook's defaults
    assert all(extra.get(k) is None for k in network), extra  # unset, not "" (an empty proxy means: go direct)

    searches = len([r for r in emulator.requests if r.path == SEARCH_PATH])
    row.find_element(By.CSS_SELECTOR, "button[aria-label='Test Connection']").click()
    toast = wait(browser, connection_test_toast)
    message = wait(browser, lambda d: toast.find_element(By.CSS_SELECTOR, "[data-part=description]").text)
    assert toast.get_attribute("data-type") == "success", message
    assert emulator.url in message
    tests = [r for r in emulator.requests if r.path == SEARCH_PATH][searches:]
    assert len(tests) == 1 and tests[0].status == 200 and tests[0].authorization


def connection_test_toast(driver: Any) -> Any:
    """The notification the Test button raised ("Test Connection Successful" or "… Failed"), once shown."""
    for toast in driver.find_elements(By.CSS_SELECTOR, "[data-scope=toast][data-part=root]"):
        if toast.find_element(By.CSS_SELECTOR, "[data-part=title]").text.startswith("Test Connection"):
            return toast
    return None


def test_connection_test_endpoint_with_the_request_the_ui_sends(deployment: Deployment) -> None:
    """The body Airflow 3.3's Test button posts (``TestConnectionButton``): the listed connection, port as a number."""
    admin, emulator = deployment.token("admin"), deployment.emulator
    conn_id = "kapture_over_rest"
    body = {"connection_id": conn_id, "conn_type": "kapture", "host": "http://127.0.0.1", "port": emulator.port,
            "login": emulator.config["username"], "password": emulator.config["password"]}  # fmt: skip
    assert deployment.call("POST", "/api/v2/connections", admin, body)[0] == 201
    _, listed = deployment.call("GET", f"/api/v2/connections/{conn_id}", admin)
    ui_request = {
        "conn_type": listed["conn_type"], "connection_id": listed["connection_id"],
        "description": listed["description"] or "", "extra": listed["extra"] or "{}", "host": listed["host"] or "",
        "login": listed["login"] or "", "password": listed["password"] or "", "port": listed["port"] or 0,
        "schema": listed["schema"] or "",
    }  # fmt: skip
    assert ui_request["password"] == "***"  # the UI never has the stored password: the API must use its own

    status, result = deployment.call("POST", "/api/v2/connections/test", admin, ui_request)

    assert status == 200, result
    assert result["status"] is True and emulator.url in result["message"], result
