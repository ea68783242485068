"""What every client command shares: the channel to the control plane, the token, and readable errors."""

from __future__ import annotations

import functools
import inspect
import os
import typing
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NoReturn, Protocol, TypeVar

import grpc
import typer

DEFAULT_ADDRESS = "127.0.0.1:50051"

AddressOption = Annotated[str, typer.Option("--address", envvar="MW_ADDRESS", help="Control-plane address, host:port.")]
TokenOption = Annotated[
    str | None, typer.Option("--token", envvar="MW_TOKEN", help="Bearer token (prefer --token-file).")
]
TokenFileOption = Annotated[
    Path | None,
    typer.Option(
        "--token-file",
        envvar="MW_TOKEN_FILE",
        help="File holding the bearer token. Default: <data-dir>/admin.token when it exists.",
    ),
]
TlsCaOption = Annotated[
    Path | None,
    typer.Option("--tls-ca", envvar="MW_TLS_CA", help="CA bundle (PEM) to verify the server: use TLS."),
]
TlsCertOption = Annotated[
    Path | None,
    typer.Option("--tls-cert", envvar="MW_TLS_CERT", help="Client certificate (PEM) for mutual TLS."),
]
TlsKeyOption = Annotated[
    Path | None,
    typer.Option("--tls-key", envvar="MW_TLS_KEY", help="Client private key (PEM) for mutual TLS."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
YesOption = Annotated[
    bool,
    typer.Option(
        "--yes", "-y", help="Do not ask for confirmation (for scripts; without it the command asks on stdin)."
    ),
]


def fail(message: str, *, code: int = 1) -> NoReturn:
    """Prints one error line to stderr and exits."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


@dataclass(frozen=True)
class Connection:
    address: str
    token: str
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None

    @classmethod
    def from_options(
        cls,
        *,
        address: str,
        token: str | None,
        token_file: Path | None,
        tls_ca: Path | None = None,
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
    ) -> Connection:
        return cls(address, resolve_token(token, token_file), tls_ca, tls_cert, tls_key)

    @contextmanager
    def channel(self) -> Iterator[grpc.Channel]:
        if self.tls_ca is None and self.tls_cert is None:
            channel = grpc.insecure_channel(self.address)
        else:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=_read(self.tls_ca, "--tls-ca"),
                private_key=_read(self.tls_key, "--tls-key"),
                certificate_chain=_read(self.tls_cert, "--tls-cert"),
            )
            channel = grpc.secure_channel(self.address, credentials)
        with channel:
            yield channel

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),)


def _read(path: Path | None, option: str) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as error:
        fail(f"{option}: cannot read {path}: {error.strerror}")


def resolve_token(token: str | None, token_file: Path | None) -> str:
    if token:
        return token.strip()
    path = token_file
    if path is None:
        default = Path(os.environ.get("MW_DATA_DIR", "var")) / "admin.token"
        if default.exists():
            path = default
    if path is None:
        fail("no token: pass --token-file PATH (or --token, MW_TOKEN, MW_TOKEN_FILE)", code=2)
    try:
        text = path.read_text().strip()
    except OSError as error:
        fail(f"--token-file: cannot read {path}: {error.strerror}", code=2)
    if not text:
        fail(f"--token-file: {path} is empty", code=2)
    return text


def confirm(question: str, *, declined: str) -> None:
    """Asks a yes/no question on stdin; no (or no answer: stdin closed) ends the command, pointing at --yes."""
    try:
        typer.confirm(question, abort=True)
    except typer.Abort:
        fail(f"not confirmed: {declined} (pass --yes to skip this question in scripts)")


T = TypeVar("T")

_DEADLINE_S = 30.0


def call(connection: Connection, rpc: Callable[..., T], request: object) -> T:
    """Makes one unary call; a failure ends the command with the server's reason on one line."""
    try:
        return rpc(request, metadata=connection.metadata, timeout=_DEADLINE_S)
    except grpc.RpcError as error:
        rpc_failed(connection, error)


def rpc_failed(connection: Connection, error: grpc.RpcError) -> NoReturn:
    """Ends the command with a failed call's status and the server's reason on one line."""
    code: grpc.StatusCode = error.code()
    details: str = error.details() or ""
    if code is grpc.StatusCode.UNAVAILABLE:
        fail(f"cannot reach the control plane at {connection.address}: {details}")
    fail(f"{code.name}: {details}")


PAGE_SIZE = 1000
"""Rows asked per page by commands that collect every page (servers cap larger sizes at their maximum)."""


class PagedRequest(Protocol):
    """A List request (AIP-158): the fields collect_pages fills in for each page."""

    page_size: int
    page_token: str


def collect_pages(
    connection: Connection,
    rpc: Callable[..., Any],
    request: PagedRequest,
    items: Callable[[Any], Sequence[T]],
    *,
    limit: int | None = None,
) -> list[T]:
    """Calls a List RPC page after page until the last page (or `limit` items) and returns the items in order.

    `items` picks the repeated field out of a response (e.g. `lambda page: page.gateways`); `request` carries the
    filter and is reused with each page's token.
    """
    found: list[T] = []
    request.page_token = ""
    while limit is None or len(found) < limit:
        request.page_size = PAGE_SIZE if limit is None else min(PAGE_SIZE, limit - len(found))
        page = call(connection, rpc, request)
        found.extend(items(page))
        request.page_token = page.next_page_token
        if not request.page_token:
            break
    return found if limit is None else found[:limit]


_CONNECTION_OPTIONS: dict[str, tuple[Any, Any]] = {
    "address": (AddressOption, DEFAULT_ADDRESS),
    "token": (TokenOption, None),
    "token_file": (TokenFileOption, None),
    "tls_ca": (TlsCaOption, None),
    "tls_cert": (TlsCertOption, None),
    "tls_key": (TlsKeyOption, None),
}


def client_command(func: Callable[..., None]) -> Callable[..., None]:
    """Gives a command the shared connection options and passes it a ready `connection=` instead.

    Typer reads the wrapper's signature, so every client command takes --address, --token, --token-file
    and the TLS options without repeating them.
    """
    signature = inspect.signature(func)
    kept = [p for p in signature.parameters.values() if p.name != "connection"]
    added = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default)
        for name, (annotation, default) in _CONNECTION_OPTIONS.items()
    ]

    @functools.wraps(func)
    def command(*args: Any, **kwargs: Any) -> None:
        options = {name: kwargs.pop(name) for name in _CONNECTION_OPTIONS}
        func(*args, connection=Connection.from_options(**options), **kwargs)

    hints = typing.get_type_hints(func, include_extras=True)
    hints.pop("connection", None)
    command.__annotations__ = {**hints, **{name: ann for name, (ann, _) in _CONNECTION_OPTIONS.items()}}
    command.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[*(p.replace(annotation=hints.get(p.name, p.annotation)) for p in kept), *added]
    )
    return command
