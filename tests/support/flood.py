"""A server that answers every connection with up to a gigabyte, for the bad-input tests:
`python -m tests.support.flood PORT`. It looks like HTTP (a response head announcing one
chunk of a gigabyte) so that a client reads on into the body; it stops writing to a peer
that closes."""

from __future__ import annotations

import asyncio
import sys

GIB = 1 << 30
CHUNK = b"x" * 65536


async def serve(port: int) -> None:
    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sent = 0
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n" % GIB)
        try:
            while sent < GIB:
                writer.write(CHUNK)
                await writer.drain()
                sent += len(CHUNK)
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(flood, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1])))
