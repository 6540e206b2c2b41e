"""Baseline: a single-hop grpc.aio echo server (uvloop), driven by the same client machinery."""

from __future__ import annotations

import asyncio
import json
import signal

import grpc

from medaid.common.server import install_uvloop

METHOD = "/medaid.bench.Echo/Echo"


def _identity(b: bytes) -> bytes:
    return b


async def _echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return request


async def main() -> None:
    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        "medaid.bench.Echo",
        {"Echo": grpc.unary_unary_rpc_method_handler(_echo, request_deserializer=_identity,
                                                     response_serializer=_identity)},
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(json.dumps({"event": "listening", "port": port, "service": "echo"}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(0)


if __name__ == "__main__":
    install_uvloop()
    asyncio.run(main())
