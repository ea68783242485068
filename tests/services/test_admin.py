"""Environments and tokens through the real AdminService, on SQLite and PostgreSQL."""

from __future__ import annotations

import stat

import grpc
import pytest
import sqlalchemy as sa

from meterwire.admin.v1 import admin_service_pb2 as pb
from meterwire.admin.v1 import admin_service_pb2_grpc as pb_grpc
from services.admin.service import AdminService
from services.server import ControlPlane
from services.storage import tables
from tests.clients import Tokens, bearer


async def _failure(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await call  # type: ignore[misc]
    return failure.value


def _env_request(environment_id: str, *, description: str = "") -> pb.CreateEnvironmentRequest:
    return pb.CreateEnvironmentRequest(
        environment=pb.Environment(environment_id=environment_id, description=description)
    )


async def test_creating_an_environment_twice_is_idempotent_but_a_conflict_is_refused(
    channel: grpc.aio.Channel, admin_secret: str
) -> None:
    stub = pb_grpc.AdminServiceStub(channel)
    first = await stub.CreateEnvironment(_env_request("prod", description="live"), metadata=bearer(admin_secret))
    again = await stub.CreateEnvironment(_env_request("prod", description="live"), metadata=bearer(admin_secret))
    assert (first.created, again.created) == (True, False)
    assert first.environment.display_name == "prod"
    assert again.environment.create_time == first.environment.create_time

    conflict = await _failure(
        stub.CreateEnvironment(_env_request("prod", description="other"), metadata=bearer(admin_secret))
    )
    assert conflict.code() is grpc.StatusCode.ALREADY_EXISTS


# The id check refuses these before any storage is touched: one database engine is enough.
@pytest.mark.parametrize("storage_dialect", ["sqlite"], indirect=True)
@pytest.mark.parametrize("bad_id", ["", "Prod", "1prod", "prod_eu", "p" * 64])
async def test_an_invalid_environment_id_is_refused_naming_the_field(
    channel: grpc.aio.Channel, admin_secret: str, bad_id: str
) -> None:
    stub = pb_grpc.AdminServiceStub(channel)
    error = await _failure(stub.CreateEnvironment(_env_request(bad_id), metadata=bearer(admin_secret)))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert (error.details() or "").startswith("environment.environment_id: ")


async def test_environments_are_listed_in_pages(channel: grpc.aio.Channel, admin_secret: str) -> None:
    stub = pb_grpc.AdminServiceStub(channel)
    names = [f"env-{i}" for i in range(5)]
    for name in reversed(names):
        await stub.CreateEnvironment(_env_request(name), metadata=bearer(admin_secret))
    seen: list[str] = []
    page_token = ""
    pages = 0
    while True:
        page = await stub.ListEnvironments(
            pb.ListEnvironmentsRequest(page_size=2, page_token=page_token), metadata=bearer(admin_secret)
        )
        seen += [e.environment_id for e in page.environments]
        pages += 1
        page_token = page.next_page_token
        if not page_token:
            break
    assert (seen, pages) == (names, 3)


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.ListEnvironmentsRequest(page_size=-1), "page_size"),
        (pb.ListEnvironmentsRequest(page_token="%%%"), "page_token"),
    ],
)
async def test_bad_pagination_is_invalid_argument(
    channel: grpc.aio.Channel, admin_secret: str, request_: pb.ListEnvironmentsRequest, field: str
) -> None:
    stub = pb_grpc.AdminServiceStub(channel)
    error = await _failure(stub.ListEnvironments(request_, metadata=bearer(admin_secret)))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert (error.details() or "").startswith(f"{field}: ")


async def test_a_gateway_token_needs_an_existing_environment_and_a_gateway_id(
    channel: grpc.aio.Channel, tokens: Tokens
) -> None:
    missing_env = await _failure(tokens.create(pb.ROLE_GATEWAY, environment_id="nowhere", gateway_id="gw-1"))
    assert missing_env.code() is grpc.StatusCode.NOT_FOUND
    assert "environment_id: no environment 'nowhere'" in (missing_env.details() or "")

    await tokens.environment("prod")
    no_gateway = await _failure(tokens.create(pb.ROLE_GATEWAY, environment_id="prod"))
    assert no_gateway.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert (no_gateway.details() or "").startswith("gateway_id: ")

    admin_bound = await _failure(tokens.create(pb.ROLE_ADMIN, environment_id="prod"))
    assert admin_bound.code() is grpc.StatusCode.INVALID_ARGUMENT

    unknown_role = await _failure(tokens.create(pb.ROLE_UNSPECIFIED))
    assert (unknown_role.details() or "").startswith("role: ")


async def test_tokens_are_stored_hashed_and_listed_without_secrets(
    control_plane: ControlPlane, channel: grpc.aio.Channel, tokens: Tokens
) -> None:
    await tokens.environment("prod")
    created = await tokens.create(pb.ROLE_GATEWAY, environment_id="prod", gateway_id="gw-1")
    assert created.secret.startswith("mw_")
    assert created.token.token_id.startswith("tok_")

    async with control_plane.engine.connect() as connection:
        rows = (await connection.execute(sa.select(tables.api_tokens))).mappings().all()
    stored = {row["token_id"]: row for row in rows}
    assert created.secret not in {str(v) for row in rows for v in row.values()}
    assert len(stored[created.token.token_id]["secret_sha256"]) == 64

    listed = await pb_grpc.AdminServiceStub(channel).ListTokens(pb.ListTokensRequest(), metadata=bearer(tokens.admin))
    by_id = {t.token_id: t for t in listed.tokens}
    assert by_id[created.token.token_id].gateway_id == "gw-1"
    assert by_id[created.token.token_id].environment_id == "prod"
    assert "secret" not in pb.Token.DESCRIPTOR.fields_by_name


async def test_a_reporter_token_keeps_its_environment_scope(tokens: Tokens) -> None:
    await tokens.environment("env-a")
    created = await tokens.create(pb.ROLE_REPORTER, environment_ids=("env-a",))
    assert list(created.token.environment_ids) == ["env-a"]


async def test_revoked_tokens_are_hidden_unless_asked_for(channel: grpc.aio.Channel, tokens: Tokens) -> None:
    created = await tokens.create(pb.ROLE_REPORTER)
    stub = pb_grpc.AdminServiceStub(channel)
    await stub.RevokeToken(pb.RevokeTokenRequest(token_id=created.token.token_id), metadata=bearer(tokens.admin))
    again = await stub.RevokeToken(
        pb.RevokeTokenRequest(token_id=created.token.token_id), metadata=bearer(tokens.admin)
    )
    assert again.token.revoke_time.seconds > 0

    active = await stub.ListTokens(pb.ListTokensRequest(), metadata=bearer(tokens.admin))
    everything = await stub.ListTokens(pb.ListTokensRequest(show_revoked=True), metadata=bearer(tokens.admin))
    assert created.token.token_id not in {t.token_id for t in active.tokens}
    assert created.token.token_id in {t.token_id for t in everything.tokens}

    missing = await _failure(
        stub.RevokeToken(pb.RevokeTokenRequest(token_id="tok_nope"), metadata=bearer(tokens.admin))
    )
    assert missing.code() is grpc.StatusCode.NOT_FOUND


async def test_the_first_start_writes_a_private_admin_token_once(control_plane: ControlPlane) -> None:
    path = control_plane.settings.admin_token_path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    secret = path.read_text().strip()
    admin = AdminService(control_plane.engine)
    principal = await admin.authenticate(secret)
    assert principal.role == "admin"
    assert not await admin.bootstrap_admin_token(path)
    assert path.read_text().strip() == secret


async def test_the_data_dir_holding_admin_token_is_private_on_every_engine(control_plane: ControlPlane) -> None:
    # On PostgreSQL nothing but the admin token makes the data dir: it must not come out 0755 either.
    token_path = control_plane.settings.admin_token_path
    assert stat.S_IMODE(token_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(token_path.parent.stat().st_mode) == 0o700
