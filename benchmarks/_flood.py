"""Half-open calls as an attacker holds them: unary methods called as streams that never send, re-opened as the
server ends them. Imports only gRPC, so ``python -m benchmarks._flood ADDRESS METHOD N`` starts in a second as a
separate attacker process (it holds the calls until its stdin closes, then prints how the server ended them as
JSON); :class:`HalfOpenFlood` runs the same in a thread of the calling process.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from dataclasses import dataclass, field

import grpc

__all__ = ["HalfOpenFlood", "Outcome"]


@dataclass
class Outcome:
    """What one attack got."""

    name: str
    expected: grpc.StatusCode
    got: grpc.StatusCode
    detail: str = ""

    @property
    def rejected(self) -> bool:
        """Refused with the expected status."""
        return self.got == self.expected


def _ident(b: bytes) -> bytes:
    return b


@dataclass
class HalfOpenFlood:
    """Hold ``n`` half-open calls (a unary method called as a stream that never sends) against ``address``,
    re-opening each one the server ends, until :meth:`stop`. Runs on its own asyncio loop (no thread per call).

    Attributes
    ----------
    ended : dict of str to int
        How the server ended the calls, by status name.
    """

    address: str
    method: str
    n: int = 200
    ended: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="attack-half-open", daemon=True)
        self._ready = threading.Event()

    def start(self) -> HalfOpenFlood:
        self._thread.start()
        self._ready.wait(30)
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._main())
        self._loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        async with grpc.aio.insecure_channel(self.address) as ch:
            method = ch.stream_stream(self.method, request_serializer=_ident, response_deserializer=_ident)

            async def hold() -> None:
                while not self._stop.is_set():  # type: ignore[union-attr]
                    call = method()
                    await call.wait_for_connection()
                    stopper = asyncio.ensure_future(self._stop.wait())  # type: ignore[union-attr]
                    code_task = asyncio.ensure_future(call.code())
                    done, _ = await asyncio.wait({stopper, code_task}, return_when=asyncio.FIRST_COMPLETED)
                    if code_task in done:
                        name = code_task.result().name
                        self.ended[name] = self.ended.get(name, 0) + 1
                    else:
                        call.cancel()
                    stopper.cancel()

            tasks = [asyncio.ensure_future(hold()) for _ in range(self.n)]
            await asyncio.sleep(0.5)
            self._ready.set()
            await asyncio.gather(*tasks, return_exceptions=True)

    def stop(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    @property
    def outcome(self) -> Outcome:
        """Rejected when every call the server ended was ended with ``DEADLINE_EXCEEDED``."""
        return flood_outcome(f"half-open-x{self.n}", self.ended)


def flood_outcome(name: str, ended: dict[str, int]) -> Outcome:
    """Rejected when every call the server ended was ended with ``DEADLINE_EXCEEDED``."""
    ok = bool(ended) and set(ended) == {"DEADLINE_EXCEEDED"}
    return Outcome(
        name,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.DEADLINE_EXCEEDED if ok else grpc.StatusCode.OK,
        json.dumps(ended),
    )


if __name__ == "__main__":
    flood = HalfOpenFlood(sys.argv[1], sys.argv[2], int(sys.argv[3])).start()
    print("holding", flush=True)
    sys.stdin.read()  # until the benchmark closes our stdin
    flood.stop()
    print(json.dumps(flood.ended), flush=True)
