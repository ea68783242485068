"""Builds and runs the control plane: storage, shared objects, servicers, background jobs, auth, health,
reflection, metrics and draining."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
import structlog
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import _async as health_aio  # grpc_health.v1.health.aio; the stubs predate it
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server
from sqlalchemy.ext.asyncio import AsyncEngine

from meterwire.admin.v1 import admin_service_pb2, admin_service_pb2_grpc
from meterwire.budget.v1 import budget_service_pb2, budget_service_pb2_grpc
from meterwire.config.v1 import config_service_pb2, config_service_pb2_grpc
from meterwire.heartbeat.v1 import heartbeat_service_pb2, heartbeat_service_pb2_grpc
from meterwire.reporting.v1 import reporting_service_pb2, reporting_service_pb2_grpc
from meterwire.telemetry.v1 import telemetry_service_pb2, telemetry_service_pb2_grpc
from services.accounting.maintenance import rollup_maintenance_jobs
from services.admin.servicer import AdminServicer
from services.auth import ROLES_ATTRIBUTE, Role
from services.budget.delivery import WebhookDeliverer
from services.budget.service import BudgetService
from services.budget.servicer import BudgetServicer
from services.budget.snapshots import BudgetSnapshots
from services.budget.webhooks import Webhooks
from services.config.service import ConfigService
from services.config.servicer import ConfigServicer
from services.config.validation import ConfigLimits
from services.deps import ServiceDeps
from services.heartbeat.servicer import HeartbeatServicer
from services.interceptors import ServerInterceptor
from services.jobs import JobRunner, PeriodicJob
from services.lifecycle import Lifecycle, Managed
from services.reporting.servicer import ReportingServicer
from services.settings import ServerSettings, ServiceName, parse_listen_address
from services.storage import tables
from services.storage.engine import check_connection, create_engine, maintenance_warnings
from services.storage.migrate import prepare_schema
from services.telemetry.ingest import UsageIngest
from services.telemetry.servicer import TelemetryServicer

if TYPE_CHECKING:
    from services.console.server import ConsoleServer

log = structlog.get_logger("meterwire.server")

_HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
_REFLECTION_SERVICE = reflection.SERVICE_NAME


class StartupError(Exception):
    """The control plane cannot start; the message names the setting or resource at fault."""


_READS_CONFIG = frozenset(
    {ServiceName.CONFIG, ServiceName.HEARTBEAT, ServiceName.TELEMETRY, ServiceName.REPORTING, ServiceName.BUDGET}
)
"""Services that read the ConfigHub: config itself, heartbeat intervals, pricing, report currency, how denied
requests are answered."""
_TRACKS_FLEET = frozenset({ServiceName.HEARTBEAT, ServiceName.CONFIG})
"""Services that read or change the fleet: heartbeats, and WatchConfig's ACK/NACKs."""
_KEEPS_ROLLUPS = frozenset({ServiceName.TELEMETRY, ServiceName.REPORTING})
"""Services whose replicas compact and prune the rollups (ingest writes them, reports read them)."""
_CONSOLE_READS = frozenset({ServiceName.REPORTING, ServiceName.HEARTBEAT})
"""The usage console (--http-listen) reads reports (prices through the config hub) and the fleet, so a replica
serving it loads and keeps those up to date as if it hosted them."""


def _kept_up(settings: ServerSettings) -> frozenset[ServiceName]:
    """The services whose shared state and jobs this replica keeps: the hosted ones, and the console's reads."""
    return settings.services | _CONSOLE_READS if settings.http_listen else settings.services


def _jobs(deps: ServiceDeps, hosted: frozenset[ServiceName]) -> list[PeriodicJob]:
    """Every background job of a replica hosting `hosted`: the one place jobs are gathered (README: Background
    jobs)."""
    jobs = [deps.revocations.poll_job()]  # every RPC is authenticated, whatever is hosted
    if hosted & _READS_CONFIG:
        jobs.append(deps.config_hub.poll_job())
    if hosted & _TRACKS_FLEET:
        jobs.extend(deps.fleet.jobs())
    if hosted & _KEEPS_ROLLUPS:
        jobs.extend(rollup_maintenance_jobs(deps.engine, deps.settings))
    if ServiceName.BUDGET in hosted:
        jobs.append(WebhookDeliverer(deps.engine, deps.settings).job())
        jobs.append(deps.budget_changes.poll_job())
    return jobs


async def _load_shared(deps: ServiceDeps, hosted: frozenset[ServiceName]) -> None:
    """Reads the shared objects' state from the database, config first (the fleet's intervals come from it)."""
    if hosted & (_READS_CONFIG | _TRACKS_FLEET):
        await deps.config_hub.load()
    if hosted & _TRACKS_FLEET:
        await deps.fleet.load()


def _config_servicer(deps: ServiceDeps) -> ConfigServicer:
    limits = ConfigLimits(
        max_batch_events=deps.settings.ingest_max_batch_events, max_batch_bytes=deps.settings.ingest_max_batch_bytes
    )
    service = ConfigService(deps.engine, deps.config_hub, limits)
    return ConfigServicer(service, deps.config_hub, answers=deps.fleet)


@dataclass(frozen=True)
class _Hosted:
    descriptor: ServiceDescriptor
    add_to_server: Callable[[Any, grpc.aio.Server], None]
    make_servicer: Callable[[ServiceDeps], object]


_SERVICES: dict[ServiceName, _Hosted] = {
    ServiceName.TELEMETRY: _Hosted(
        telemetry_service_pb2.DESCRIPTOR.services_by_name["TelemetryService"],
        telemetry_service_pb2_grpc.add_TelemetryServiceServicer_to_server,
        lambda deps: TelemetryServicer(
            UsageIngest(deps.engine, deps.settings, deps.prices, budget_changes=deps.budget_changes)
        ),
    ),
    ServiceName.HEARTBEAT: _Hosted(
        heartbeat_service_pb2.DESCRIPTOR.services_by_name["HeartbeatService"],
        heartbeat_service_pb2_grpc.add_HeartbeatServiceServicer_to_server,
        lambda deps: HeartbeatServicer(deps.fleet),
    ),
    ServiceName.CONFIG: _Hosted(
        config_service_pb2.DESCRIPTOR.services_by_name["ConfigService"],
        config_service_pb2_grpc.add_ConfigServiceServicer_to_server,
        _config_servicer,
    ),
    ServiceName.BUDGET: _Hosted(
        budget_service_pb2.DESCRIPTOR.services_by_name["BudgetService"],
        budget_service_pb2_grpc.add_BudgetServiceServicer_to_server,
        lambda deps: BudgetServicer(
            BudgetService(deps.engine, changes=deps.budget_changes),
            Webhooks(deps.engine),
            alert_poll_interval=deps.settings.budget_alert_poll_interval,
            configs=deps.config_hub,
            snapshots=BudgetSnapshots(
                deps.engine, deps.budget_changes, min_interval=deps.settings.budget_snapshot_min_interval
            ),
            heartbeat_interval=deps.settings.heartbeat_interval,
        ),
    ),
    ServiceName.REPORTING: _Hosted(
        reporting_service_pb2.DESCRIPTOR.services_by_name["ReportingService"],
        reporting_service_pb2_grpc.add_ReportingServiceServicer_to_server,
        lambda deps: ReportingServicer(deps.engine, deps.settings, deps.prices),
    ),
    ServiceName.ADMIN: _Hosted(
        admin_service_pb2.DESCRIPTOR.services_by_name["AdminService"],
        admin_service_pb2_grpc.add_AdminServiceServicer_to_server,
        lambda deps: AdminServicer(deps.admin),
    ),
}


def full_service_name(name: ServiceName) -> str:
    return str(_SERVICES[name].descriptor.full_name)


def declared_roles(descriptor: ServiceDescriptor, servicer: object) -> dict[str, frozenset[Role]]:
    """Method path → roles, from each method's @requires; a method without one is a bug caught at start."""
    roles: dict[str, frozenset[Role]] = {}
    for method in descriptor.methods:
        declared = getattr(getattr(servicer, method.name), ROLES_ATTRIBUTE, None)
        if declared is None:
            raise RuntimeError(f"{descriptor.full_name}.{method.name} does not declare its roles with @requires")
        roles[f"/{descriptor.full_name}/{method.name}"] = declared
    return roles


def _probe_port(host: str, port: int, *, setting: str) -> None:
    """Fails with a readable error if the port is taken (gRPC core would also log its own lines to stderr)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as error:
        raise StartupError(f"{setting}: cannot resolve {host!r}: {error}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as error:
            raise StartupError(f"{setting}: cannot listen on {host}:{port}: {error.strerror}") from None


class ControlPlane(Managed):
    """One control-plane process. `async with ControlPlane(settings) as cp:` starts it; `shutdown()` drains."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.port: int = 0
        self._engine: AsyncEngine | None = None
        self._server: grpc.aio.Server | None = None
        self._health = health_aio.HealthServicer()
        self._metrics: Any = None
        self._stopping: asyncio.Task[None] | None = None
        self._lifecycles: list[Lifecycle] = []
        self._deps: ServiceDeps | None = None
        self._jobs = JobRunner()
        self._console: ConsoleServer | None = None

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            raise RuntimeError("the control plane is not started")
        return self._engine

    @property
    def deps(self) -> ServiceDeps:
        """The shared objects (fleet, config hub, ...) the hosted services were built with."""
        if self._deps is None:
            raise RuntimeError("the control plane is not started")
        return self._deps

    @property
    def job_names(self) -> list[str]:
        """The background jobs this replica runs."""
        return self._jobs.names

    async def start(self) -> None:
        settings = self.settings
        try:
            # Cheap checks first: a busy port must not leave a migrated database or a new token behind.
            self._engine = create_engine(settings.resolved_database_url)
            deps = self._deps = ServiceDeps.build(settings, self._engine)
            self._server = self._build_server(deps)
            self.port = self._bind(self._server)
            self._bind_console(deps)
            self._start_metrics()
            await check_connection(self._engine)
            schema = await prepare_schema(self._engine)
            log.info("database ready", from_revision=schema.from_revision, revision=schema.to_revision)
            for warning in await maintenance_warnings(self._engine, tables.metadata.tables):
                log.warning(warning)
            if await deps.admin.bootstrap_admin_token(settings.admin_token_path):
                log.warning(
                    "created the first admin token; keep it secret",
                    path=str(settings.admin_token_path.resolve()),
                )
            await _load_shared(deps, _kept_up(settings))
            for component in self._lifecycles:
                await component.start()
            for job in _jobs(deps, _kept_up(settings)):
                self._jobs.add(job)
            await self._jobs.start()
            await self._server.start()
            if self._console is not None:
                await self._console.start()
            for name in [*self._hosted_names(), ""]:
                await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        except BaseException:
            await self._close_resources()
            raise
        log.info(
            "control plane serving",
            listen=f"{parse_listen_address(settings.listen, setting='listen')[0]}:{self.port}",
            services=sorted(s.value for s in settings.services),
            tls=settings.tls_cert is not None,
            mutual_tls=settings.tls_client_ca is not None,
            metrics=settings.metrics_listen,
            console=self.console_url,
        )

    def _hosted_names(self) -> list[str]:
        return [full_service_name(name) for name in sorted(self.settings.services)]

    def _build_server(self, deps: ServiceDeps) -> grpc.aio.Server:
        method_roles: dict[str, frozenset[Role]] = {}
        registrations = []
        for name in sorted(self.settings.services):
            hosted = _SERVICES[name]
            servicer = hosted.make_servicer(deps)
            method_roles.update(declared_roles(hosted.descriptor, servicer))
            registrations.append((hosted, servicer))
            if isinstance(servicer, Lifecycle):
                self._lifecycles.append(servicer)
        interceptor = ServerInterceptor(
            authenticate=deps.admin.authenticate,
            method_roles=method_roles,
            public_services=frozenset({_HEALTH_SERVICE, _REFLECTION_SERVICE}),
            revocations=deps.revocations,
        )
        server = grpc.aio.server(interceptors=[interceptor], options=self._channel_options())
        for hosted, servicer in registrations:
            hosted.add_to_server(servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection([*self._hosted_names(), _HEALTH_SERVICE, _REFLECTION_SERVICE], server)
        return server

    def _channel_options(self) -> list[tuple[str, int]]:
        s = self.settings

        def ms(delta: Any) -> int:
            return int(delta.total_seconds() * 1000)

        return [
            # Without this, a second server on the same port would silently share it instead of failing.
            ("grpc.so_reuseport", 0),
            ("grpc.keepalive_time_ms", ms(s.keepalive_time)),
            ("grpc.keepalive_timeout_ms", ms(s.keepalive_timeout)),
            # grpc core's own ping timeout (60 s unless set) would otherwise override keepalive_timeout, and a
            # dead agent link would be closed only after about a minute.
            ("grpc.http2.ping_timeout_ms", ms(s.keepalive_timeout)),
            ("grpc.keepalive_permit_without_calls", 1),
            # Agents ping every ~15 s to notice a dead server; accept pings that often. The key is grpc core's
            # GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS; an unknown key is silently ignored, and grpc's
            # 5 minute default then answers the third idle ping with GOAWAY "too_many_pings".
            ("grpc.http2.min_ping_interval_without_data_ms", ms(s.min_client_ping_interval)),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.max_connection_age_ms", ms(s.max_connection_age)),
            ("grpc.max_connection_age_grace_ms", ms(s.max_connection_age_grace)),
            ("grpc.max_receive_message_length", s.max_message_bytes),
            ("grpc.max_send_message_length", s.max_message_bytes),
        ]

    def _bind(self, server: grpc.aio.Server) -> int:
        s = self.settings
        host, port = parse_listen_address(s.listen, setting="listen")
        if port:
            _probe_port(host, port, setting="listen")
        try:
            if s.tls_cert is None or s.tls_key is None:
                port = server.add_insecure_port(s.listen)
            else:
                credentials = grpc.ssl_server_credentials(
                    [(s.tls_key.read_bytes(), s.tls_cert.read_bytes())],
                    root_certificates=s.tls_client_ca.read_bytes() if s.tls_client_ca else None,
                    require_client_auth=s.tls_client_ca is not None,
                )
                port = server.add_secure_port(s.listen, credentials)
        except OSError as error:
            raise StartupError(f"tls: cannot read {error.filename}: {error.strerror}") from None
        except RuntimeError as error:
            raise StartupError(f"listen: cannot listen on {s.listen} (in use or not permitted): {error}") from None
        if port == 0:
            raise StartupError(f"listen: cannot listen on {s.listen} (address in use or not permitted)")
        return port

    def _bind_console(self, deps: ServiceDeps) -> None:
        """Takes the console's port (--http-listen); its HTTP stack is imported only when it is turned on."""
        if self.settings.http_listen is None:
            return
        from services.console.server import ConsoleServer

        self._console = ConsoleServer(deps)
        try:
            self._console.bind()
        except OSError as error:
            raise StartupError(str(error)) from None

    @property
    def console_url(self) -> str | None:
        """The usage console's address (None: --http-listen is off)."""
        return None if self._console is None else self._console.url

    def _start_metrics(self) -> None:
        if self.settings.metrics_listen is None:
            return
        host, port = parse_listen_address(self.settings.metrics_listen, setting="metrics_listen")
        try:
            self._metrics, _thread = start_http_server(port, addr=host)
        except OSError as error:
            raise StartupError(f"metrics_listen: cannot listen on {self.settings.metrics_listen}: {error}") from None

    @property
    def metrics_port(self) -> int | None:
        return None if self._metrics is None else int(self._metrics.server_port)

    async def run(self) -> None:
        """Serves until shutdown() has finished."""
        if self._server is None:
            await self.start()
        assert self._server is not None
        await self._server.wait_for_termination()
        if self._stopping is not None:
            await self._stopping

    def request_shutdown(self) -> None:
        """Starts draining (signal handlers call this); later calls do nothing."""
        if self._stopping is None:
            self._stopping = asyncio.get_running_loop().create_task(self._drain())

    async def shutdown(self) -> None:
        """Drains and stops; safe to call twice and from several tasks."""
        self.request_shutdown()
        assert self._stopping is not None
        await asyncio.shield(self._stopping)

    async def _drain(self) -> None:
        if self._server is not None:
            # NOT_SERVING first (watchers are told at once), while RPCs are still accepted, so balancers
            # and agents move away before the listener closes.
            await self._health.enter_graceful_shutdown()
            log.info("draining", drain_delay_s=self.settings.drain_delay.total_seconds())
            await asyncio.sleep(self.settings.drain_delay.total_seconds())
            if self._deps is not None:
                self._deps.budget_changes.close()  # budget snapshot streams end now, cleanly, within the grace
            await self._server.stop(self.settings.shutdown_grace.total_seconds())
        await self._close_resources()
        log.info("control plane stopped")

    async def _close_resources(self) -> None:
        if self._console is not None:  # first: its pages read through everything below
            await self._console.shutdown()
            self._console = None
        while self._lifecycles:
            await self._lifecycles.pop().shutdown()
        await self._jobs.shutdown()  # after the services: final steps (the fleet's last flush) see their last writes
        if self._metrics is not None:
            self._metrics.shutdown()
            self._metrics.server_close()
            self._metrics = None
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None
