"""A run that takes the ledger's lease and holds it until it is killed: ``python lease_holder.py CONN TABLE EXPIRY``.

Prints ``held`` (a line of its own) once the lease is taken; a test then kills it (SIGKILL: no release,
no last heartbeat).
"""

from __future__ import annotations

import sys
import time

from kapture_provider.compat import BaseHook
from kapture_provider.sync.lease import Lease, LeaseHolder
from kapture_provider.sync.ledger import Ledger

if __name__ == "__main__":
    conn_id, table, expiry = sys.argv[1], sys.argv[2], float(sys.argv[3])
    ledger = Ledger(BaseHook.get_connection(conn_id).get_hook(), table)
    Lease(ledger, LeaseHolder.this_process("killed_dag", "killed_run", "sync"), expiry=expiry).acquire()
    print("held", flush=True)
    while True:
        time.sleep(60)
