"""Runs `meterwire serve` as a real process for system tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

MW_COMMAND = [sys.executable, "-m", "services.cli.main"]
READY_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _channel(address: str, tls_ca: Path | None, client: Path | None) -> grpc.Channel:
    if tls_ca is None:
        return grpc.insecure_channel(address)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=tls_ca.read_bytes(),
        private_key=client.with_suffix(".key").read_bytes() if client else None,
        certificate_chain=client.with_suffix(".pem").read_bytes() if client else None,
    )
    return grpc.secure_channel(address, credentials)


def health_status(
    address: str, service: str = "", *, timeout: float = 2.0, tls_ca: Path | None = None, client: Path | None = None
) -> int | None:
    """The health status of `service`, or None when the server does not answer."""
    with _channel(address, tls_ca, client) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.RpcError:
            return None
    return int(response.status)


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MW_COMMAND, *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


class ServeProcess:
    def __init__(
        self,
        process: subprocess.Popen[str],
        address: str,
        data_dir: Path,
        log_path: Path,
        client_tls: Sequence[str] = (),
    ) -> None:
        self.process = process
        self.address = address
        self.data_dir = data_dir
        self.log_path = log_path
        self.client_tls = tuple(client_tls)
        """The CLI's TLS options for reaching this server (what `serve` was told to check readiness with)."""

    def log(self) -> str:
        """What the server has logged so far (its stdout and stderr)."""
        return self.log_path.read_text()

    @property
    def admin_token_file(self) -> Path:
        return self.data_dir / "admin.token"

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, "--address", self.address, "--token-file", str(self.admin_token_file), *self.client_tls)

    def stop(self, signum: signal.Signals = signal.SIGTERM, *, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signum)
        return self.process.wait(timeout=timeout)


@contextmanager
def serve(
    data_dir: Path,
    *extra: str,
    env: dict[str, str] | None = None,
    port: int | None = None,
    ready_tls_ca: Path | None = None,
    ready_client: Path | None = None,
) -> Iterator[ServeProcess]:
    """Starts `meterwire serve` and waits until health says SERVING; kills it on the way out if still running.

    Its output goes to a file beside `data_dir` (ServeProcess.log): a pipe nobody reads fills up, and then the
    server blocks in its next log line (seen: after a few failed usage batches)."""
    address = f"127.0.0.1:{port or free_port()}"
    log_path = data_dir.with_name(f"{data_dir.name}-serve-{time.time_ns()}.log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as log_file:
        process = subprocess.Popen(
            [*MW_COMMAND, "serve", "--data-dir", str(data_dir), "--listen", address, *extra],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "MW_DRAIN_DELAY": "1", "MW_SHUTDOWN_GRACE": "2", **(env or {})},
        )
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while (
            health_status(address, tls_ca=ready_tls_ca, client=ready_client) != health_pb2.HealthCheckResponse.SERVING
        ):
            if process.poll() is not None:
                raise RuntimeError(f"meterwire serve exited with {process.returncode}: {log_path.read_text()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"meterwire serve did not become ready on {address}")
            time.sleep(0.1)
        client_tls = ["--tls-ca", str(ready_tls_ca)] if ready_tls_ca else []
        if ready_client:
            client_tls += ["--tls-cert", str(ready_client.with_suffix(".pem"))]
            client_tls += ["--tls-key", str(ready_client.with_suffix(".key"))]
        yield ServeProcess(process, address, data_dir, log_path, client_tls)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


def one_line_error(result: subprocess.CompletedProcess[str], *, expected: Sequence[str]) -> str:
    """Asserts the command failed, ending with one readable error line mentioning every `expected` text
    (structured log lines of what happened before may precede it; a traceback may not)."""
    assert result.returncode != 0, result
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    assert lines[-1] == errors[0], result.stderr
    for text in expected:
        assert text in errors[0], errors[0]
    return errors[0]
