"""Streams the spool to the control plane over StreamUsage: batches, a window of unacked batches, acks, backoff."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import timedelta

import grpc
import structlog

from gateway_agent.channel import EOF_MARKER, Backoff, BidiCall, LinkState, describe_rpc_error, open_bidi
from gateway_agent.spool import Rejection, Spool, SpooledEvent
from meterwire.telemetry.v1 import telemetry_service_pb2 as telemetry_pb

log = structlog.get_logger("meterwire.agent.sender")

STREAM_USAGE_METHOD = "/meterwire.telemetry.v1.TelemetryService/StreamUsage"
_STREAM = "telemetry"
# Consecutive acked batches after which a limit shrunk by an INVALID_ARGUMENT is restored.
_RESTORE_LIMIT_AFTER_ACKS = 64


def _varint(value: int) -> bytes:
    if value < 0x4000:  # one or two bytes: every event's length in a batch, so the loop below is rare
        return bytes((value,)) if value < 0x80 else bytes((value & 0x7F | 0x80, value >> 7))
    out = bytearray()
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def encode_batch(batch_sequence: int, payloads: list[bytes], committed_through_sequence: int = 0) -> bytes:
    """A StreamUsageRequest's wire bytes built from already-serialized UsageEvents, with no parse per event."""
    parts = [b"\x08", _varint(batch_sequence)]  # field 1 (batch_sequence), varint
    for payload in payloads:
        parts += (b"\x12", _varint(len(payload)), payload)  # field 2 (events), length-delimited
    if committed_through_sequence:
        parts += (b"\x18", _varint(committed_through_sequence))  # field 3 (committed_through_sequence), varint
    return b"".join(parts)


@dataclass(frozen=True)
class BatchLimits:
    """How the sender cuts the spool into batches (the environment's config may change them)."""

    max_events: int = 500
    max_bytes: int = 1024 * 1024
    linger: timedelta = timedelta(milliseconds=50)
    max_unacked: int = 8


@dataclass
class _Batch:
    events: list[SpooledEvent]
    payload_bytes: int
    batch_sequence: int = 0
    sent_at: float = field(default_factory=time.monotonic)

    @property
    def last_sequence(self) -> int:
        return self.events[-1].sequence


class StreamBrokenError(Exception):
    """The stream misbehaved (an unexpected ack, or no ack in time); it is reopened."""


class Sender:
    """Delivers every spooled event exactly as the spool holds it; only acked events are ever deleted."""

    def __init__(
        self,
        *,
        spool: Spool,
        channel: grpc.aio.Channel,
        metadata: tuple[tuple[str, str], ...],
        limits: BatchLimits,
        backoff: Backoff,
        link: LinkState,
        ack_timeout: timedelta,
    ) -> None:
        self._spool = spool
        self._call_factory = channel.stream_stream(
            STREAM_USAGE_METHOD,
            request_serializer=None,  # requests are already wire bytes (encode_batch)
            response_deserializer=telemetry_pb.StreamUsageResponse.FromString,
        )
        self._metadata = metadata
        self.limits = limits
        self._backoff = backoff
        self._link = link
        self._ack_timeout_s = ack_timeout.total_seconds()
        self._window: deque[_Batch] = deque()
        self._window_space = asyncio.Event()
        self._stopping = asyncio.Event()
        self.acked_through = spool.last_acked_sequence
        self.committed_through_sequence = spool.acked_floor
        """The agent's promise in every batch: each spool event up to here was acknowledged. Acks come in batch
        order on a stream and a batch holds every committed event after the previous one (an event never stored
        cannot be sent), so the last acked batch's last sequence is such a point."""
        self.batches_acked = 0
        self.events_accepted = 0
        self.events_duplicate = 0
        self.events_rejected = 0
        self.stream_failures = 0
        self.last_error = ""
        self._divisor = 1
        self._acks_since_shrink = 0

    def update_limits(self, limits: BatchLimits) -> None:
        self.limits = limits

    @property
    def unacked_batches(self) -> int:
        return len(self._window)

    def _has_data(self) -> bool:
        return self._spool.committed_through > self.acked_through and self._spool.depth > 0

    async def run(self) -> None:
        """Delivers until shutdown(); reconnects with backoff after any failure, forever while data remains."""
        attempt = 0
        while not self._stopping.is_set():
            if not self._has_data():
                await self._wait_for_data()
                continue
            acked_before = self.batches_acked
            try:
                await self._stream_once()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                self.stream_failures += 1
                # Writing to a stream the server already ended says only "RPC already finished".
                ended = isinstance(error, asyncio.InvalidStateError)
                self.last_error = "the usage stream ended" if ended else describe_rpc_error(error)
                self._link.mark_down(_STREAM, self.last_error)
                self._on_stream_error(error)
            if self.batches_acked > acked_before:
                attempt = 0
            if self._stopping.is_set():
                break
            delay = self._backoff.delay(attempt)
            attempt += 1
            log.warning("usage stream down; retrying", error=self.last_error, retry_in_s=round(delay, 3))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=delay)

    async def _wait_for_data(self) -> None:
        self._spool.committed.clear()
        if self._has_data():
            return
        stop = asyncio.ensure_future(self._stopping.wait())
        data = asyncio.ensure_future(self._spool.committed.wait())
        try:
            await asyncio.wait([stop, data], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            data.cancel()

    def _on_stream_error(self, error: BaseException) -> None:
        if not (isinstance(error, grpc.aio.AioRpcError) and error.code() is grpc.StatusCode.INVALID_ARGUMENT):
            return
        # The contract fails a whole stream only for a batch over the server's limits: send smaller ones.
        first = self._window[0] if self._window else None
        if first is not None and len(first.events) == 1:
            event = first.events[0]
            log.error("the control plane refuses this event's batch outright; dead-lettered", event_id=event.event_id)
            rejection = Rejection(event.sequence, "STREAM_REJECTED", "", error.details() or "")
            self._spool.acknowledge([event.sequence], len(event.payload), [rejection])
            self.acked_through = event.sequence
            self.committed_through_sequence = max(self.committed_through_sequence, event.sequence)
            self.events_rejected += 1
        else:
            self._divisor = min(self._divisor * 2, 1 << 16)
            self._acks_since_shrink = 0

    async def _stream_once(self) -> None:
        self._window.clear()
        call = open_bidi(self._call_factory, self._metadata)
        tasks = [
            asyncio.ensure_future(self._send_batches(call)),
            asyncio.ensure_future(self._read_acks(call)),
            asyncio.ensure_future(self._watch_acks()),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            call.cancel()

    async def _send_batches(self, call: BidiCall) -> None:
        cursor = self.acked_through
        batch_sequence = 0
        while True:
            while len(self._window) >= self.limits.max_unacked:
                self._window_space.clear()
                await self._window_space.wait()
            batch = await self._next_batch(cursor)
            if batch is None:  # stopping, and everything spooled has been sent
                break
            batch_sequence += 1
            batch.batch_sequence = batch_sequence
            batch.sent_at = time.monotonic()
            self._window.append(batch)
            await call.write(
                encode_batch(batch_sequence, [e.payload for e in batch.events], self.committed_through_sequence)
            )
            cursor = batch.last_sequence
        # Draining for shutdown: let the acks of what is in flight arrive, then end the stream.
        while self._window:
            self._window_space.clear()
            await self._window_space.wait()
        await call.done_writing()

    async def _next_batch(self, cursor: int) -> _Batch | None:
        max_events = max(1, self.limits.max_events // self._divisor)
        deadline = time.monotonic() + self.limits.linger.total_seconds()
        while True:
            self._spool.committed.clear()
            events = await self._spool.read_after(cursor, max_events=max_events, max_bytes=self.limits.max_bytes)
            size = sum(len(e.payload) for e in events)
            full = len(events) >= max_events or size * 2 >= self.limits.max_bytes
            remaining = deadline - time.monotonic()
            if events and (full or remaining <= 0 or self._stopping.is_set()):
                return _Batch(events, size)
            if self._stopping.is_set():
                return None
            # Linger for more events once some are there; otherwise wait as long as it takes.
            timeout = remaining if events else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._spool.committed.wait(), timeout=timeout)

    async def _read_acks(self, call: BidiCall) -> None:
        while True:
            response = await call.read()
            if response is EOF_MARKER:
                if self._stopping.is_set() and not self._window:
                    return
                raise StreamBrokenError("the control plane ended the usage stream")
            self._link.mark_up(_STREAM)
            self._on_ack(response.ack)

    def _on_ack(self, ack: telemetry_pb.UsageAck) -> None:
        if not self._window or ack.batch_sequence != self._window[0].batch_sequence:
            expected = self._window[0].batch_sequence if self._window else None
            raise StreamBrokenError(f"ack for batch {ack.batch_sequence}, expected {expected}")
        batch = self._window.popleft()
        rejected = []
        for item in ack.rejected:
            if item.index < len(batch.events):
                event = batch.events[item.index]
                reason = telemetry_pb.RejectionReason.Name(item.reason)
                rejected.append(Rejection(event.sequence, reason, item.field, item.message))
                log.error(
                    "control plane rejected a usage event; dead-lettered",
                    event_id=event.event_id,
                    reason=reason,
                    field=item.field,
                    message=item.message,
                )
        if ack.accepted_count + ack.duplicate_count + ack.rejected_count != len(batch.events):
            log.warning("ack counts do not add up to the batch", batch=ack.batch_sequence, events=len(batch.events))
        self._spool.acknowledge([e.sequence for e in batch.events], batch.payload_bytes, rejected)
        self.acked_through = batch.last_sequence
        self.committed_through_sequence = max(self.committed_through_sequence, batch.last_sequence)
        self.batches_acked += 1
        self.events_accepted += ack.accepted_count
        self.events_duplicate += ack.duplicate_count
        self.events_rejected += len(rejected)
        self._acks_since_shrink += 1
        if self._divisor > 1 and self._acks_since_shrink >= _RESTORE_LIMIT_AFTER_ACKS:
            self._divisor //= 2
            self._acks_since_shrink = 0
        self._window_space.set()

    async def _watch_acks(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self._ack_timeout_s))
            if self._window and time.monotonic() - self._window[0].sent_at > self._ack_timeout_s:
                raise StreamBrokenError(f"no ack for batch {self._window[0].batch_sequence} in {self._ack_timeout_s}s")

    def request_stop(self) -> None:
        """Stops taking new batches; what is in flight may still be acked."""
        self._stopping.set()
        self._window_space.set()
        self._spool.committed.set()
