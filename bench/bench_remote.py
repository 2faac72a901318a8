"""Object storage, measured against a real S3 server (moto's server mode on 127.0.0.1).

Throughput (default): one store written locally and into a bucket, then the shuffled
loader's rate for one epoch, side by side:
  local disk | moto (s3fs over HTTP) | moto behind a proxy adding 20-50 ms per request.

    .venv/bin/python bench/bench_remote.py [--rows 131072] [--dtype bfloat16] [--repeats 3]
        [--chunk-rows 8192] [--latency 20 50]

Beside the loader: the same proxy with 0 ms (the latency's cost alone is the ratio of
the two), and a plain concurrent s3fs GET of every object of the store (no zarr, no
loader: the ceiling one client gets from this server), and the CPU seconds the loader,
moto and the proxies spent per epoch.

Locks (--locks N): N trials of P processes (forked) starting a store's one-writer lock
on the same S3 store at the same instant (a barrier); each trial must have exactly one
winner (the conditional PUT of sae_hooks/store/remote.py). moto's own threaded server
checks a PUT's condition and stores the object without a lock between: --atomic runs
it serving one request at a time, as S3 applies each PUT atomically.

    .venv/bin/python bench/bench_remote.py --locks 100 --procs 4 [--atomic]
"""

from __future__ import annotations

import argparse
import http.client
import http.server
import logging
import multiprocessing as mp
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import torch

KEYS = {"key": "bench", "secret": "bench-secret"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(port: int, timeout: float = 60.0) -> None:
    end = time.time() + timeout
    while time.time() < end:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


# -- the latency proxy: a threaded HTTP forwarder ---------------------------------------


def proxy(port: int, upstream: int, low_ms: float, high_ms: float) -> None:
    """Forward every request to 127.0.0.1:upstream after sleeping low..high ms."""

    class Forward(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _any(self) -> None:
            time.sleep(random.uniform(low_ms, high_ms) / 1000)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            conn = http.client.HTTPConnection("127.0.0.1", upstream, timeout=120)
            headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
            conn.request(self.command, self.path, body=body, headers=headers)
            reply = conn.getresponse()
            data = reply.read()
            self.send_response(reply.status, reply.reason)
            for k, v in reply.getheaders():
                if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
            conn.close()

        do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _any

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Forward)
    server.daemon_threads = True
    server.serve_forever()


def start_servers(
    *latencies: tuple[float, float],
) -> tuple[list[subprocess.Popen], int, list[int]]:
    """moto's server and one proxy per latency range, each its own process:
    (procs, moto's port, the proxies' ports)."""
    moto_port, proxy_ports = free_port(), [free_port() for _ in latencies]
    procs = [subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(moto_port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )]  # fmt: skip
    for port, (low, high) in zip(proxy_ports, latencies):
        procs.append(subprocess.Popen(
            [sys.executable, __file__, "--proxy", str(port), str(moto_port), str(low), str(high)],
        ))  # fmt: skip
    for port in [moto_port, *proxy_ports]:
        wait_for(port)
    return procs, moto_port, proxy_ports


def options(port: int) -> dict:
    return {"endpoint_url": f"http://127.0.0.1:{port}", **KEYS}


# -- throughput --------------------------------------------------------------------------


def write_store(
    location: str, x: torch.Tensor, dtype: str, chunk_rows: int, storage_options=None
) -> None:
    from sae_hooks.activations import ActivationBatch
    from sae_hooks.store import StoreWriter

    n = len(x)
    with StoreWriter(location, points=["p"], d_model=x.shape[1], dtype=dtype,
                     chunk_rows=chunk_rows, storage_options=storage_options) as w:  # fmt: skip
        for lo in range(0, n, 16384):
            hi = min(n, lo + 16384)
            w.append(ActivationBatch(
                acts={"p": x[lo:hi]}, token_ids=torch.zeros(hi - lo, dtype=torch.long),
                doc_index=torch.arange(lo, hi), position=torch.zeros(hi - lo, dtype=torch.long),
            ))  # fmt: skip


def epoch_rate(location: str, storage_options, batch_size: int) -> float:
    from sae_hooks.store import ActivationLoader, open_store

    store = open_store(location, storage_options=storage_options)
    loader = ActivationLoader(store, "p", batch_size, val_fraction=0.0, dtype=None)
    t = time.perf_counter()
    rows = sum(len(b) for b in loader)
    return rows / (time.perf_counter() - t)


def cpu_seconds(procs: list[subprocess.Popen]) -> list[float]:
    """CPU seconds (user + system) used so far by this process and by each of `procs`."""
    import psutil

    mine = os.times()
    return [mine.user + mine.system] + [sum(psutil.Process(p.pid).cpu_times()[:2]) for p in procs]


def plain_get_rate(port: int, key: str, rows: int) -> float:
    """The ceiling: rows/s of one concurrent s3fs GET of every object of the store
    (no zarr, no decoding, no loader), through the endpoint on `port`."""
    import s3fs

    fs = s3fs.S3FileSystem(**options(port), skip_instance_cache=True)
    keys = fs.find(key)
    t = time.perf_counter()
    fs.cat(keys)
    return rows / (time.perf_counter() - t)


def throughput(args: argparse.Namespace) -> None:
    import s3fs

    print(f"load average before: {os.getloadavg()}; cpus: {os.cpu_count()}")
    procs, moto_port, (zero_port, proxy_port) = start_servers((0, 0), tuple(args.latency))
    tmp = Path(tempfile.mkdtemp(prefix="bench-remote-"))
    try:
        s3fs.S3FileSystem(**options(moto_port)).mkdir("bench")
        x = torch.randn(args.rows, args.d)
        t = time.perf_counter()
        write_store(str(tmp / "store"), x, args.dtype, args.chunk_rows)
        t_local = time.perf_counter() - t
        t = time.perf_counter()
        write_store("s3://bench/store", x, args.dtype, args.chunk_rows, options(moto_port))
        t_s3 = time.perf_counter() - t
        print(f"{args.rows} rows x {args.d} {args.dtype}, chunks of {args.chunk_rows} rows; "
              f"written in {t_local:.1f} s locally, {t_s3:.1f} s into moto")  # fmt: skip
        places = {
            "local disk": (str(tmp / "store"), None),
            "moto": ("s3://bench/store", options(moto_port)),
            "moto + proxy, 0 ms": ("s3://bench/store", options(zero_port)),
            f"moto + {args.latency[0]:g}-{args.latency[1]:g} ms/request": (
                "s3://bench/store", options(proxy_port)),
        }  # fmt: skip
        rates: dict[str, list[float]] = {name: [] for name in places}
        ceilings = {
            "moto, plain s3fs GET of all objects": moto_port,
            f"proxy {args.latency[0]:g}-{args.latency[1]:g} ms, plain GET": proxy_port,
        }
        rates.update({name: [] for name in ceilings})
        cpu: dict[str, list[float]] = {name: [0.0] * 5 for name in places}
        for _ in range(args.repeats):  # interleaved, so load changes hit every place alike
            for name, (where, opts) in places.items():
                t, before = time.perf_counter(), cpu_seconds(procs)
                rates[name].append(epoch_rate(where, opts, args.batch_size))
                spent = [time.perf_counter() - t] + [
                    b - a for a, b in zip(before, cpu_seconds(procs))]  # fmt: skip
                cpu[name] = [c + x for c, x in zip(cpu[name], spent)]
            for name, port in ceilings.items():
                rates[name].append(plain_get_rate(port, "bench/store", args.rows))
        local = statistics.median(rates["local disk"])
        print(f"{'where':<28} {'rows/s (median)':>16} {'runs':>30} {'vs local':>9}")
        for name, r in rates.items():
            runs = ", ".join(f"{v / 1e3:.0f}k" for v in r)
            med = statistics.median(r)
            print(f"{name:<28} {med:>16,.0f} {runs:>30} {med / local:>8.2f}x")
        print(f"\nper epoch (mean), seconds: {'wall':>6} {'loader CPU':>11} {'moto CPU':>9} "
              f"{'proxies CPU':>12}")  # fmt: skip
        for name, (wall, own, moto, *fwd) in cpu.items():
            n = args.repeats
            print(f"{name:<28} {wall / n:>12.2f} {own / n:>11.2f} {moto / n:>9.2f} "
                  f"{sum(fwd) / n:>12.2f}")  # fmt: skip
        lat = statistics.median(rates[list(places)[-1]]) / statistics.median(
            rates["moto + proxy, 0 ms"]
        )
        print(f"latency hiding: {args.latency[0]:g}-{args.latency[1]:g} ms vs 0 ms through "
              f"the same proxy: {lat:.2f}x")  # fmt: skip
        print(f"load average after: {os.getloadavg()}; cpus: {os.cpu_count()}")
    finally:
        for p in procs:
            p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


# -- simultaneous writers ----------------------------------------------------------------


def _contender(url: str, opts: dict, barrier, results, go, done) -> None:
    from sae_hooks.store import lock

    for _ in iter(go.get, None):
        barrier.wait()
        try:
            lock.hold_store(url, opts)
        except lock.StoreLockedError:
            results.put(0)
        else:
            results.put(1)
            done.wait()  # hold it until every contender has tried
            lock.release_store(url)
        barrier.wait()


def locks(args: argparse.Namespace, port: int | None = None, opts: dict | None = None) -> int:
    """Trials of `args.procs` processes racing for one store's lock: trials with one winner."""
    import s3fs

    procs, server = [], None
    if port is None and args.atomic:  # moto with one request at a time (tests/s3_server.py)
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from s3_server import atomic_server

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
        server = atomic_server()
        port = server.get_host_and_port()[1]
    elif port is None:  # moto's own threaded server
        procs, port, _ = start_servers()
    opts = opts or options(port)
    bucket = f"race-{uuid.uuid4().hex[:8]}"
    s3fs.S3FileSystem(**opts).mkdir(bucket)
    ctx = mp.get_context("fork")
    barrier, results, done = ctx.Barrier(args.procs + 1), ctx.Queue(), ctx.Event()
    gos = [ctx.Queue() for _ in range(args.procs)]
    url = f"s3://{bucket}/run/store"
    workers = [ctx.Process(target=_contender, args=(url, opts, barrier, results, g, done))
               for g in gos]  # fmt: skip
    for w in workers:
        w.start()
    good = 0
    try:
        for trial in range(args.locks):
            done.clear()
            for g in gos:
                g.put(trial)
            barrier.wait()  # released together
            winners = sum(results.get(timeout=120) for _ in range(args.procs))
            done.set()
            barrier.wait()  # the winner has released
            good += winners == 1
            if winners != 1:
                print(f"trial {trial}: {winners} writers held the lock")
        print(f"{good}/{args.locks} trials of {args.procs} simultaneous writers: exactly one won")
    finally:
        for g in gos:
            g.put(None)
        for w in workers:
            w.join(30)
        for p in procs:
            p.kill()
        if server is not None:
            server.stop()
    return good


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=131072)
    parser.add_argument("--d", type=int, default=768)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--chunk-rows", type=int, default=8192, help="rows per stored chunk")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--latency", type=float, nargs=2, default=[20.0, 50.0])
    parser.add_argument("--locks", type=int, default=0, help="lock trials instead")
    parser.add_argument("--procs", type=int, default=4)
    parser.add_argument("--atomic", action="store_true", help="moto serving one request at a time")
    parser.add_argument("--proxy", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.proxy:
        port, upstream, low, high = args.proxy
        proxy(int(port), int(upstream), float(low), float(high))
    elif args.locks:
        sys.exit(0 if locks(args) == args.locks else 1)
    else:
        throughput(args)


if __name__ == "__main__":
    np.random.seed(0)
    main()
