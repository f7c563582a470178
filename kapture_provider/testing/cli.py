"""``kapture-emulator``: run the Kapture CRM API emulator until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import os
import signal
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from kapture_provider.testing.emulator import Fault, KaptureEmulator


def _fault_list(value: str) -> tuple[Fault, ...]:
    try:
        return tuple(Fault(item.strip()) for item in value.split(",") if item.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{exc}; choose from {', '.join(Fault)}") from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kapture-emulator",
        description="Serve an in-memory emulator of the Kapture CRM order API, with fault injection.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8765, help="port, 0 for a free one (default: %(default)s)")
    parser.add_argument("--username", default="kapture-user", help="Basic auth user (default: %(default)s)")
    parser.add_argument("--password", default="kapture-password", help="Basic auth password")
    parser.add_argument("--token", help="also accept 'Authorization: Basic <TOKEN>' verbatim")
    parser.add_argument(
        "--failure-mode",
        choices=("body", "http"),
        default="body",
        help="answer auth/validation failures with HTTP 200 (body) or 400/401 (http)",
    )
    parser.add_argument("--latency", type=float, default=0.0, help="seconds from each request's arrival to its answer")
    parser.add_argument("--rate-limit", type=float, help="add-update requests per second before 429s")
    parser.add_argument("--retry-after", type=int, default=1, help="Retry-After seconds (default: 1)")
    parser.add_argument("--fault-rate", type=float, default=0.0, help="share of requests given a fault, 0..1")
    parser.add_argument(
        "--faults",
        type=_fault_list,
        default=KaptureEmulator.DEFAULT_FAULT_KINDS,
        help=f"comma-separated faults to draw from, among: {', '.join(Fault)}",
    )
    parser.add_argument("--seed", type=int, help="seed of the random fault draws")
    parser.add_argument("--slow-seconds", type=float, default=5.0, help="delay of the 'slow' fault")
    parser.add_argument(
        "--no-record-bodies",
        dest="record_bodies",
        action="store_false",
        help="do not keep request bodies in the request log (for long benchmarks)",
    )
    parser.add_argument("--tls-cert", type=Path, help="serve HTTPS with this PEM certificate (and key)")
    parser.add_argument("--tls-key", type=Path, help="the certificate's PEM private key, if not in --tls-cert")
    parser.add_argument("--client-ca", type=Path, help="require client certificates issued by this PEM CA")
    parser.add_argument("--ready-file", type=Path, help="write the base URL to this file once listening")
    return parser


def _write_atomically(path: Path, text: str) -> None:
    """Write ``text`` so that a reader polling ``path`` never sees it half-written."""
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, encoding="utf-8") as handle:
        handle.write(text)
    os.replace(handle.name, path)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the emulator in the foreground; returns 0 after SIGTERM or SIGINT."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        emulator = KaptureEmulator(
            host=args.host,
            port=args.port,
            username=args.username,
            password=args.password,
            token=args.token,
            failure_mode=args.failure_mode,
            latency=args.latency,
            rate_limit=args.rate_limit,
            retry_after=args.retry_after,
            fault_rate=args.fault_rate,
            fault_kinds=args.faults,
            seed=args.seed,
            slow_seconds=args.slow_seconds,
            record_bodies=args.record_bodies,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            client_ca=args.client_ca,
        )
    except (ValueError, OSError) as exc:
        parser.error(str(exc))

    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    with emulator:
        if args.ready_file is not None:
            _write_atomically(args.ready_file, emulator.url)
        print(f"kapture-emulator listening on {emulator.url}", flush=True)
        stop.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
