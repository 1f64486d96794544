"""A proxy that does nothing: forwards the bytes of each connection to the upstream and back.

The floor for any HTTP proxy in `bench/gateway_overhead.py --relay`: one more process and one
more TCP hop per request, no parsing. Run: `python bench/null_relay.py --port P --upstream URL`.
"""

from __future__ import annotations

import argparse
import asyncio
from urllib.parse import urlsplit


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def serve(port: int, upstream: str) -> None:
    target = urlsplit(upstream)

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(target.hostname, target.port)
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    server = await asyncio.start_server(relay, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="base URL, e.g. http://127.0.0.1:8000")
    args = parser.parse_args()
    try:
        import uvloop  # the gateway's event loop, where installed
    except ImportError:
        asyncio.run(serve(args.port, args.upstream))
    else:
        uvloop.run(serve(args.port, args.upstream))


if __name__ == "__main__":
    main()
