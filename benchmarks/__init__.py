"""Benchmark suite: ``python -m benchmarks.run [--quick]`` (``make bench`` / ``make bench-quick``).

The Kapture emulator runs in its own process; every measured run happens in a fresh child process
(forked from a server that has the imports loaded), so client CPU time and peak RSS are the client's
alone. Results go to ``benchmarks/RESULTS.md``; scratch files to ``benchmarks/.work/`` (git-ignored).
"""

import sys
from pathlib import Path

# The example DAGs' shared module (the query) is imported as Airflow imports it: from the DAGs folder.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "dags"))
