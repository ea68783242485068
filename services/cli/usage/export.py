"""`meterwire usage export`: streams raw events or grouped rows from the server into a CSV, JSONL or XLSX file."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import grpc
import typer
from rich.progress import Progress, SpinnerColumn, TextColumn

from meterwire.reporting.v1 import reporting_service_pb2 as pb
from meterwire.reporting.v1 import reporting_service_pb2_grpc as pb_grpc
from services.cli.client import Connection, fail, rpc_failed
from services.cli.output import console, on_terminal
from services.cli.usage.filters import (
    EnvOption,
    FromOption,
    GatewayOption,
    ModelOption,
    RangeOption,
    TagOption,
    ToOption,
    TzOption,
    granularity,
    group_by,
    usage_filter,
)
from services.usage_terms.query import DIMENSION_NAMES
from services.usage_terms.records import (
    EVENT_COLUMNS,
    FORMATS,
    event_record,
    grouped_columns,
    grouped_record,
    open_writer,
)


@contextmanager
def _progress() -> Iterator[Progress | None]:
    """A spinner with the row count on a terminal; nothing in a pipe or a log (it would print its frames)."""
    if not on_terminal():
        yield None
        return
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), console=console, transient=True) as progress:
        yield progress


def export(
    connection: Connection,
    output: Annotated[Path, typer.Option("--output", "-o", help="File to write.")],
    file_format: Annotated[str, typer.Option("--format", "-f", help=f"{', '.join(FORMATS)}.")] = "csv",
    by: Annotated[
        list[str] | None,
        typer.Option("--by", help=f"Group by (repeat): {DIMENSION_NAMES}; none: one row per raw event."),
    ] = None,
    bucket: Annotated[str | None, typer.Option("--granularity", help="With --by: 1m, 5m, 1h or 1d.")] = None,
    range_name: RangeOption = "today",
    start: FromOption = None,
    end: ToOption = None,
    tz: TzOption = "UTC",
    env: EnvOption = None,
    gateway: GatewayOption = None,
    model: ModelOption = None,
    tag: TagOption = None,
) -> None:
    """Export usage (raw events, or grouped per bucket) to CSV, JSONL or XLSX, streaming."""
    if file_format not in FORMATS:
        fail(f"--format: {file_format!r} is not one of {', '.join(FORMATS)}", code=2)
    names = by or []
    request = pb.ExportUsageRequest(
        filter=usage_filter(range_name, start, end, tz, environments=env, gateways=gateway, models=model, tags=tag),
        group_by=group_by(names),
        granularity=granularity(bucket) if bucket else pb.GRANULARITY_UNSPECIFIED,
        time_zone=tz,
    )
    writer = open_writer(output, file_format, grouped_columns(names) if names else EVENT_COLUMNS)
    written = 0
    try:
        with connection.channel() as channel, _progress() as progress:
            task = progress.add_task("exporting: 0 rows", total=None) if progress else None
            stream = pb_grpc.ReportingServiceStub(channel).ExportUsage(request, metadata=connection.metadata)
            for response in stream:
                for stored in response.events:
                    writer.write(event_record(stored))
                for row in response.rows:
                    writer.write(grouped_record(row, names))
                written += len(response.events) + len(response.rows)
                if progress is not None and task is not None:
                    progress.update(task, description=f"exporting: {written:,} rows")
    except grpc.RpcError as error:
        rpc_failed(connection, error)
    finally:
        writer.close()
    console.print(f"wrote {written:,} rows to {output}")
