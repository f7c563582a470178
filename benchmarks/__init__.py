"""Benchmark suite: ``python -m benchmarks.run [--quick]`` (``make bench`` / ``make bench-quick``).

The Kapture emulator runs in its own process; every measured run happens in a fresh child process
(forked from a server that has the imports loaded), so client CPU time and peak RSS are the client's
alone. Results go to ``benchmarks/RESULTS.md``; scratch files to ``benchmarks/.work/`` (git-ignored).
"""
