"""`meterwire serve` as a real process: readiness, services, draining on SIGTERM, and readable start-up errors."""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from services.storage.migrate import HEAD_REVISION
from tests.system.serve import free_port, health_status, one_line_error, run_cli, serve

pytestmark = pytest.mark.system

SIX_SERVICES = {
    "meterwire.telemetry.v1.TelemetryService",
    "meterwire.heartbeat.v1.HeartbeatService",
    "meterwire.config.v1.ConfigService",
    "meterwire.budget.v1.BudgetService",
    "meterwire.reporting.v1.ReportingService",
    "meterwire.admin.v1.AdminService",
}
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVING = health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_six_services_with_health_and_reflection(tmp_path: Path) -> None:
    with serve(tmp_path / "var") as server, grpc.insecure_channel(server.address) as channel:
        services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
        assert services == SIX_SERVICES | {"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"}
        for name in SIX_SERVICES:
            assert health_status(server.address, name) == SERVING


def test_a_subset_of_services_is_hosted_and_reported(tmp_path: Path) -> None:
    with serve(tmp_path / "var", "--services", "telemetry,heartbeat") as server:
        assert health_status(server.address, "meterwire.telemetry.v1.TelemetryService") == SERVING
        assert health_status(server.address, "meterwire.heartbeat.v1.HeartbeatService") == SERVING
        with grpc.insecure_channel(server.address) as channel:
            with pytest.raises(grpc.RpcError) as unknown:
                health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service="meterwire.admin.v1.AdminService"), timeout=2
                )
            assert unknown.value.code() is grpc.StatusCode.NOT_FOUND
            services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
        assert "meterwire.admin.v1.AdminService" not in services
        assert "meterwire.telemetry.v1.TelemetryService" in services


def test_sigterm_turns_health_not_serving_before_the_server_exits_cleanly(tmp_path: Path) -> None:
    with serve(tmp_path / "var", env={"MW_DRAIN_DELAY": "2"}) as server:
        watched: list[int] = []

        def watch() -> None:  # an in-flight stream across the drain
            with grpc.insecure_channel(server.address) as channel:
                try:
                    for update in health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest()):
                        watched.append(update.status)
                except grpc.RpcError:
                    pass

        watcher = threading.Thread(target=watch)
        watcher.start()
        while not watched:
            time.sleep(0.05)
        server.process.send_signal(signal.SIGTERM)

        seen_not_serving_while_alive = False
        while server.process.poll() is None:
            if health_status(server.address, timeout=0.5) == NOT_SERVING and server.process.poll() is None:
                seen_not_serving_while_alive = True
            time.sleep(0.05)
        watcher.join(timeout=10)

        assert seen_not_serving_while_alive
        assert watched[0] == SERVING
        assert NOT_SERVING in watched
        assert server.process.returncode == 0
        assert "draining" in server.log()


def test_the_cli_manages_environments_and_tokens_against_a_live_server(tmp_path: Path) -> None:
    with serve(tmp_path / "var") as server:
        created = server.cli("envs", "create", "prod", "--description", "live traffic")
        assert created.returncode == 0, created.stderr
        assert "environment created prod" in created.stdout

        token = server.cli("tokens", "create", "gateway", "-e", "prod", "-g", "gw-1", "--json")
        assert token.returncode == 0, token.stderr
        issued = json.loads(token.stdout)
        assert issued["secret"].startswith("mw_")
        assert issued["token"]["gateway_id"] == "gw-1"

        listed = json.loads(server.cli("tokens", "list", "--json").stdout)
        assert issued["token"]["token_id"] in {t["token_id"] for t in listed}

        revoked = server.cli("tokens", "revoke", issued["token"]["token_id"])
        assert revoked.returncode == 0, revoked.stderr

        as_gateway = run_cli("envs", "list", "--address", server.address, "--token", issued["secret"])
        one_line_error(as_gateway, expected=["UNAUTHENTICATED", "was revoked"])

        environments = json.loads(server.cli("envs", "list", "--json").stdout)
        assert [e["environment_id"] for e in environments] == ["prod"]


def test_an_unreachable_database_is_one_line_naming_it(tmp_path: Path) -> None:
    result = run_cli(
        "serve", "--data-dir", str(tmp_path), "--database-url", "postgresql+asyncpg://postgres:pw@127.0.0.1:1/none"
    )
    line = one_line_error(result, expected=["cannot reach database", "127.0.0.1:1"])
    assert "pw" not in line


def test_an_unsupported_database_url_is_one_line_naming_the_setting(tmp_path: Path) -> None:
    result = run_cli("serve", "--data-dir", str(tmp_path), "--database-url", "mysql://root@localhost/db")
    one_line_error(result, expected=["--database-url", "sqlite+aiosqlite"])


def test_a_port_in_use_is_one_line_naming_the_address(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("serve", "--data-dir", str(tmp_path), "--listen", f"127.0.0.1:{port}")
    one_line_error(result, expected=["listen", f"127.0.0.1:{port}"])


def test_unknown_services_are_one_line_naming_the_setting(tmp_path: Path) -> None:
    result = run_cli("serve", "--data-dir", str(tmp_path), "--services", "telemetry,billing")
    one_line_error(result, expected=["--services", "billing"])


def test_serve_refuses_a_schema_newer_than_it_knows(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    upgraded = run_cli("db", "upgrade", "--data-dir", str(data_dir))
    assert upgraded.returncode == 0, upgraded.stderr
    assert f"upgraded empty database -> {HEAD_REVISION}" in upgraded.stdout
    with sqlite3.connect(data_dir / "meterwire.db") as db:
        db.execute("UPDATE alembic_version SET version_num = '9999'")
    result = run_cli("serve", "--data-dir", str(data_dir), "--listen", f"127.0.0.1:{free_port()}")
    one_line_error(result, expected=["9999", "newer than this meterwire knows"])
    current = run_cli("db", "current", "--data-dir", str(data_dir))
    assert "database: 9999" in current.stdout


def test_metrics_are_served_over_http_when_asked(tmp_path: Path) -> None:
    metrics_port = free_port()
    with serve(tmp_path / "var", "--metrics-listen", f"127.0.0.1:{metrics_port}") as server:
        assert server.cli("envs", "list", "--json").returncode == 0
        refused = run_cli("envs", "list", "--address", server.address, "--token", "mw_000000000000_x")
        assert refused.returncode != 0
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
            body = response.read().decode()
    listed = 'grpc_method="/meterwire.admin.v1.AdminService/ListEnvironments"'
    assert f'meterwire_grpc_server_handled_total{{grpc_code="OK",{listed}}} 1.0' in body
    assert f'meterwire_grpc_server_handled_total{{grpc_code="UNAUTHENTICATED",{listed}}} 1.0' in body
