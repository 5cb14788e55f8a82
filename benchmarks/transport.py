"""SMS transport measurement: httpx's default transport against aiohttp-backed alternatives.

Each variant posts N Twilio-style form requests, C at a time, to the local HTTP
sink (answering at once, so the client's CPU is what limits the rate) and
reports requests/s and client CPU ms per request (``time.process_time`` of a
fresh subprocess, so nothing else is charged).  ``aiohttp-raw`` is a reference
without the httpx interface.

    python -m benchmarks.transport --url http://127.0.0.1:PORT -n 2000 -c 50 --variant httpx-default
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from typing import Any

from benchmarks.harness import ROOT

VARIANTS = ("httpx-default", "httpx-aiohttp", "aiohttp-raw")
PATH = "/2010-04-01/Accounts/ACbench/Messages.json"


async def _run(variant: str, base: str, n: int, conc: int) -> dict[str, Any]:
    form = {"To": "+15005550006", "From": "+15005550001", "Body": "transport benchmark"}
    sem = asyncio.Semaphore(conc)
    if variant == "aiohttp-raw":
        import aiohttp

        async with aiohttp.ClientSession(base_url=base) as session:

            async def one_raw() -> None:
                async with sem, session.post(PATH, data=form) as r:
                    r.raise_for_status()
                    await r.read()

            await one_raw()  # warm-up: connection set-up and imports
            c0, t0 = time.process_time(), time.perf_counter()
            await asyncio.gather(*(one_raw() for _ in range(n)))
            return {"cpu": time.process_time() - c0, "wall": time.perf_counter() - t0}

    import httpx

    limits = httpx.Limits(max_connections=conc, max_keepalive_connections=conc)
    if variant == "httpx-aiohttp":
        from httpx_aiohttp import AiohttpTransport

        client = httpx.AsyncClient(base_url=base, transport=AiohttpTransport(limits=limits))
    else:
        client = httpx.AsyncClient(base_url=base, limits=limits)
    async with client:

        async def one() -> None:
            async with sem:
                r = await client.post(PATH, data=form)
                r.raise_for_status()

        await one()
        c0, t0 = time.process_time(), time.perf_counter()
        await asyncio.gather(*(one() for _ in range(n)))
        return {"cpu": time.process_time() - c0, "wall": time.perf_counter() - t0}


def measure(base_url: str, variant: str, n: int, conc: int, loop: str = "asyncio") -> dict[str, Any]:
    """Run one variant in a fresh subprocess and return its record."""
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.transport", "--url", base_url, "--variant", variant,
         "-n", str(n), "-c", str(conc), "--loop", loop],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"transport benchmark {variant} failed: {out.stderr[-2000:]}")
    r = json.loads(out.stdout.strip().splitlines()[-1])
    return {"type": "transport", "transport": variant, "concurrency": conc, "n": n,
            "req_per_s": round(n / r["wall"], 1), "cpu_ms_per_request": round(r["cpu"] / n * 1000, 4),
            "wall_s": round(r["wall"], 3), "loop": loop}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.transport")
    p.add_argument("--url", required=True)
    p.add_argument("--variant", choices=VARIANTS, required=True)
    p.add_argument("-n", type=int, default=2000)
    p.add_argument("-c", type=int, default=50)
    p.add_argument("--loop", default="asyncio")
    a = p.parse_args(argv)
    coro = _run(a.variant, a.url, a.n, a.c)
    if a.loop == "uvloop":
        import uvloop

        res = uvloop.run(coro)
    else:
        res = asyncio.run(coro)
    sys.stdout.write(json.dumps(res) + "\n")


if __name__ == "__main__":
    main()
