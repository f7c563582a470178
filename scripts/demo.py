"""`make demo`: the hourly ERP → Kapture sync, end to end, through the real Airflow runner.

Seeds a SQLite warehouse, starts the Kapture emulator (told to refuse one order three times), runs
``kapture_erp_order_sync`` for four consecutive hourly intervals with ``airflow dags test`` (the refused
order is listed, retried by the next runs, then parked), syncs the whole four hours again as a manual
run of a chosen window (everything ``unchanged``, nothing sent), fixes one order by hand with
``kapture_update_order``, then prints what the emulator holds and what the ledger says. Everything lives
under ``.demo/`` and is recreated each time.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".demo"
BIN = Path(sys.executable).parent
FIRST_HOUR = "2026-11-26T00:00:00"
HOURS = 4
SUMMARY = re.compile(r"(Kapture sync (?:of|summary):? .*?) \[airflow")
#: An order of the first hour that Kapture refuses three times: listed, retried, then parked.
REFUSED_ORDER = "23500010"


def main() -> int:
    shutil.rmtree(WORK, ignore_errors=True)
    (WORK / "airflow").mkdir(parents=True)
    warehouse = WORK / "erp_warehouse.db"
    env = airflow_env(warehouse)
    step("Seeding the SQLite ERP warehouse")
    run([BIN / "python", "-m", "kapture_provider.testing.warehouse", "--db", warehouse, "--orders", "3000",
         "--invalid", "3", "--start", FIRST_HOUR, "--hours", str(HOURS)], env)  # fmt: skip
    step("Preparing a throw-away Airflow home (SQLite metadata database)")
    run([BIN / "airflow", "db", "migrate"], env, quiet=True)
    ready = WORK / "emulator.url"
    emulator = subprocess.Popen(
        [BIN / "kapture-emulator", "--port", "0", "--latency", "0.01", "--ready-file", ready],
        stdout=subprocess.DEVNULL,
    )
    try:
        url = wait_for(ready)
        step(f"Kapture emulator listening on {url}")
        env["AIRFLOW_CONN_KAPTURE_DEFAULT"] = json.dumps(
            {"conn_type": "kapture", "host": url, "login": "kapture-user", "password": "kapture-password"}
        )
        post_json(f"{url}/_emulator/script", {"order_id": REFUSED_ORDER, "faults": ["failed-body"] * 3})
        step(f"Kapture will refuse order {REFUSED_ORDER} three times")
        failures = 0
        for hour in range(1, HOURS + 1):
            failures += sync_interval(env, hour)
        window = {"window_start": f"{FIRST_HOUR}Z", "window_end": f"2026-11-26T{HOURS:02d}:00:00Z"}
        step(f"A manual run of a chosen window (params {window}): nothing changed, so nothing is sent")
        failures += dag_test(env, ["kapture_erp_order_sync", "-c", json.dumps(window)])
        step("Fixing one order by hand with kapture_update_order")
        conf = {"order_id": "23500100", "customer_name": "Demo Customer",
                "order_fields": {"delivery_status": "Delivered", "remarks": "fixed by hand in the demo"}}  # fmt: skip
        failures += dag_test(env, ["kapture_update_order", "-c", json.dumps(conf)])
        show_results(url, warehouse)
    finally:
        emulator.terminate()
        emulator.wait(timeout=10)
    print("\nDemo finished" + (f" with {failures} failed run(s)" if failures else ": every run succeeded"))
    return 1 if failures else 0


def airflow_env(warehouse: Path) -> dict[str, str]:
    env = dict(os.environ)
    home = WORK / "airflow"
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__DAGS_FOLDER=str(ROOT / "dags"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{home / 'airflow.db'}",
        AIRFLOW_CONN_ERP_WAREHOUSE=json.dumps({"conn_type": "sqlite", "host": str(warehouse)}),
    )
    return env


def sync_interval(env: dict[str, str], hour: int) -> int:
    end = f"2026-11-26T{hour:02d}:00:00+00:00"
    print(f"\n--- kapture_erp_order_sync, interval [{hour - 1:02d}:00, {hour:02d}:00) UTC")
    return dag_test(env, ["kapture_erp_order_sync", end])


def dag_test(env: dict[str, str], args: list[str]) -> int:
    """Run ``airflow dags test``; print the sync summary or the operator's own lines. 1 if it failed."""
    result = subprocess.run([BIN / "airflow", "dags", "test", *args], env=env, capture_output=True, text=True)
    output = result.stdout + result.stderr
    lines = [m.group(1) for m in SUMMARY.finditer(output)] or [
        line[line.index("Kapture update:") :].split(" [airflow")[0]
        for line in output.splitlines()
        if "Kapture update:" in line
    ]
    for line in lines:
        print("    " + line)
    for line in output.splitlines():
        if "Not delivered:" in line:
            print("    " + line[line.index("Not delivered:") :].split(" [airflow")[0])
    state = "success" if "state=success" in output else "FAILED"
    print(f"    run state: {state}")
    if result.returncode != 0 or state != "success":
        print(output[-3000:])
        return 1
    return 0


def show_results(url: str, warehouse: Path) -> None:
    step("What the emulator received and holds")
    stats = json.load(urllib.request.urlopen(f"{url}/_emulator/stats"))
    print(json.dumps(stats, indent=2))
    as_kapture = {"Authorization": "Basic " + base64.b64encode(b"kapture-user:kapture-password").decode()}
    order = json.load(
        urllib.request.urlopen(urllib.request.Request(f"{url}/_emulator/orders/23500100", headers=as_kapture))
    )
    print("Order 23500100 as Kapture holds it now:")
    print(json.dumps(order, indent=2))
    step("The change ledger in the warehouse")
    with sqlite3.connect(warehouse) as conn:
        for status, count in conn.execute(
            "SELECT status, COUNT(*) FROM kapture_order_sync_ledger GROUP BY status ORDER BY status"
        ):
            print(f"    {status:10} {count}")
        for order_id, error in conn.execute(
            "SELECT order_id, last_error FROM kapture_order_sync_ledger WHERE status != 'delivered' ORDER BY order_id"
        ):
            print(f"    {order_id}: {error}")


def post_json(url: str, payload: dict[str, object]) -> None:
    request = urllib.request.Request(url, json.dumps(payload).encode(), {"Content-Type": "application/json"})
    urllib.request.urlopen(request).close()


def run(cmd: list[object], env: dict[str, str], quiet: bool = False) -> None:
    subprocess.run([str(c) for c in cmd], env=env, check=True, stdout=subprocess.DEVNULL if quiet else None)


def wait_for(path: Path, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text().strip()
        time.sleep(0.1)
    raise TimeoutError("the Kapture emulator did not start")


def step(text: str) -> None:
    print(f"\n=== {text}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
