#!/usr/bin/env python3
"""bench/idle_holder.py — hold N idle HTTP/1.1 keep-alive connections.

Usage: idle_holder.py PORT COUNT [SOURCES] [--burst] [--reap TIMEOUT | --every SECONDS]

Opens COUNT plain TCP connections to 127.0.0.1:PORT, sends one
`GET /host HTTP/1.1` on each and reads the whole response (Content-Length),
then keeps every connection open and idle. Prints "ready N" once all are
held. By default at most 100 connections are being opened and answered at a
time (clients arriving gradually); with --burst all COUNT are connected
first and then every request is written in one go, so the server has COUNT
requests in flight at once (clients arriving together). SOURCES (default 4) is how many source addresses
127.0.0.1 .. 127.0.0.SOURCES are used round-robin, so that ephemeral ports do
not run out at high counts. Used by bench/conn-scale.sh.

Without --reap it waits until stdin closes (EOF) or a SIGTERM, then closes
them. With --every SECONDS each connection also sends one more `GET /host`
every SECONDS (each at its own phase, so the N are spread evenly), which keeps
them open past a server's idle timeout; it then ignores stdin, stops at
SIGTERM only and prints "requests R failed F" (F: requests that got no 200,
or a connection that went away), a line "failures KIND=N ... between T1
and T2 s, idle I1 to I2 s before" (kinds: timeout, closed, status ..., or
the OSError's name; times since the holder was ready; how long each failed
connection had been idle when its request was written) and "longest idle
before a request S s" (over every request: how far this process lagged
behind its schedule, which a server's idle timeout may cut short) before
closing them. Used by scripts/soak.sh
(SOAK_IDLE).

With --reap TIMEOUT (seconds) it waits instead for the server to close every
connection (the server's idle keep-alive timeout, expected TIMEOUT after each
connection's response) and prints
"closed N LATE_P50 LATE_MAX EARLY" where LATE_* are how long after
(response + TIMEOUT) the close came, in seconds (slightly negative: the
response was read here a little after the server sent it), and EARLY counts
closes that came more than 0.25 s before it. It gives up after TIMEOUT + 60 s.
"""

import asyncio
import os
import random
import signal
import sys
import time

EARLY_SLACK = 0.25  # seconds


async def get(r, w):
    """One `GET /host` on an open connection; raises unless it got a 200."""
    w.write(b"GET /host HTTP/1.1\r\nHost: bench\r\n\r\n")
    head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(head.split(b"\r\n", 1)[0].decode())
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    await asyncio.wait_for(r.readexactly(length), 10)


async def connect(port, source):
    return await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0)), 10
    )


async def one(sem, held, port, source):
    async with sem:
        r, w = await connect(port, source)
        await get(r, w)
        held.append((r, w, time.monotonic()))


async def burst(held, port, count, sources):
    """All `count` connected first (up to 1,000 connecting at a time, within
    the listen backlog), then every request written before any response is
    read."""
    sem = asyncio.Semaphore(1000)

    async def opened(source):
        async with sem:
            return await connect(port, source)

    conns = await asyncio.gather(
        *(opened(f"127.0.0.{1 + i % sources}") for i in range(count))
    )

    async def answered(r, w):
        await get(r, w)
        held.append((r, w, time.monotonic()))

    # Each task writes its request at its first step, all in one turn of
    # the event loop, before any response is awaited.
    await asyncio.gather(*(answered(r, w) for r, w in conns))


async def refresh(r, w, answered, every, counts, failures, start):
    """A request every `every` seconds until cancelled or the connection fails
    (recorded in `failures` as (seconds since start, kind, seconds the
    connection had been idle when the request was written)). `answered`:
    when the connection's last response was read; counts[2] is the longest
    idle time before any request (more than `every` when this process
    lags)."""
    # A random phase, but never later than `every` after the connection's
    # first response (it may have been answered long before all COUNT were
    # open).
    now = time.monotonic()
    await asyncio.sleep(max(0.0, min(now + random.uniform(0, every), answered + every) - now))
    while True:
        idle = time.monotonic() - answered
        counts[2] = max(counts[2], idle)
        try:
            await get(r, w)
            counts[0] += 1
            answered = time.monotonic()
        except asyncio.TimeoutError:
            kind = "timeout"
        except asyncio.IncompleteReadError:
            kind = "closed"
        except RuntimeError as e:
            kind = "status " + str(e).replace(" ", "_")
        except OSError as e:
            kind = type(e).__name__
        else:
            await asyncio.sleep(every)
            continue
        counts[1] += 1
        failures.append((time.monotonic() - start, kind, idle))
        return


async def closed_at(r):
    """When the server closed the connection (EOF or reset)."""
    try:
        while await r.read(4096):
            pass
    except ConnectionError:
        pass
    return time.monotonic()


async def main():
    args = sys.argv[1:]
    reap = every = None
    bursting = "--burst" in args
    if bursting:
        args.remove("--burst")
    if "--reap" in args:
        i = args.index("--reap")
        reap = float(args[i + 1])
        del args[i : i + 2]
    if "--every" in args:
        i = args.index("--every")
        every = float(args[i + 1])
        del args[i : i + 2]
    if len(args) < 2:
        sys.exit(
            "usage: idle_holder.py PORT COUNT [SOURCES] [--burst] [--reap TIMEOUT | --every SECONDS]"
        )
    port, count = int(args[0]), int(args[1])
    sources = int(args[2]) if len(args) > 2 else 4
    sem, held = asyncio.Semaphore(100), []
    if bursting:
        await burst(held, port, count, sources)
    else:
        await asyncio.gather(
            *(one(sem, held, port, f"127.0.0.{1 + i % sources}") for i in range(count))
        )
    print("ready", len(held), flush=True)
    if reap is None:
        counts, failures, tasks, start = [0, 0, 0.0], [], [], time.monotonic()
        if every is not None:
            tasks = [
                asyncio.create_task(refresh(r, w, t, every, counts, failures, start))
                for r, w, t in held
            ]
        loop, stop = asyncio.get_running_loop(), asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        if every is None:
            eof = loop.run_in_executor(None, sys.stdin.read)
            eof.add_done_callback(lambda _: stop.set())
        await stop.wait()
        for t in tasks:
            t.cancel()
        if every is not None:
            print("requests %d failed %d" % tuple(counts[:2]), flush=True)
            kinds = {}
            for _, kind, _ in failures:
                kinds[kind] = kinds.get(kind, 0) + 1
            times = sorted(t for t, _, _ in failures)
            idles = sorted(i for _, _, i in failures)
            print(
                "failures",
                " ".join("%s=%d" % kv for kv in sorted(kinds.items())) or "none",
                "between %.0f and %.0f s, idle %.1f to %.1f s before"
                % (times[0], times[-1], idles[0], idles[-1])
                if times
                else "",
                flush=True,
            )
            print("longest idle before a request %.1f s" % counts[2], flush=True)
        for _, w, _ in held:
            w.close()
        # the stdin reader thread may still be blocked: leave without it
        sys.stdout.flush()
        os._exit(0)
    closes = await asyncio.wait_for(
        asyncio.gather(*(closed_at(r) for r, _, _ in held)), reap + 60
    )
    late = sorted(c - (t + reap) for c, (_, _, t) in zip(closes, held))
    # `t` is when this client had read the response, a little after the
    # server sent it and started its timer (asyncio schedules 10,000
    # connections): closes up to EARLY_SLACK before t + TIMEOUT are on time.
    early = sum(1 for x in late if x < -EARLY_SLACK)
    print(
        "closed %d %.3f %.3f %d" % (len(late), late[len(late) // 2], late[-1], early),
        flush=True,
    )


asyncio.run(main())
