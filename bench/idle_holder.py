#!/usr/bin/env python3
"""bench/idle_holder.py — hold N idle HTTP/1.1 keep-alive connections.

Usage: idle_holder.py PORT COUNT [SOURCES]

Opens COUNT plain TCP connections to 127.0.0.1:PORT, sends one
`GET /host HTTP/1.1` on each and reads the whole response (Content-Length),
then keeps every connection open and idle. Prints "ready N" once all are
held and waits until stdin closes (EOF), then closes them. SOURCES (default 4)
is how many source addresses 127.0.0.1 .. 127.0.0.SOURCES are used round-robin,
so that ephemeral ports do not run out at high counts. Used by
bench/conn-scale.sh.
"""

import asyncio
import sys


async def one(sem, held, port, source):
    async with sem:
        r, w = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0)), 10
        )
        w.write(b"GET /host HTTP/1.1\r\nHost: bench\r\n\r\n")
        head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(head.split(b"\r\n", 1)[0].decode())
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        await asyncio.wait_for(r.readexactly(length), 10)
        held.append(w)


async def main():
    if len(sys.argv) < 3:
        sys.exit("usage: idle_holder.py PORT COUNT [SOURCES]")
    port, count = int(sys.argv[1]), int(sys.argv[2])
    sources = int(sys.argv[3]) if len(sys.argv) > 3 else 4
    sem, held = asyncio.Semaphore(100), []
    await asyncio.gather(
        *(one(sem, held, port, f"127.0.0.{1 + i % sources}") for i in range(count))
    )
    print("ready", len(held), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for w in held:
        w.close()


asyncio.run(main())
