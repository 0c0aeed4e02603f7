#!/usr/bin/env python3
"""Peer bench: pgqueuer + a small HTTP task (issue 3).

The same workload and rules as ../graphile-worker/bench.mjs (read its header
for the scenarios and for how to read the numbers against clinic-webhooks);
only the queue differs. pgqueuer is the Python peer of issue 3.

Run it (from the repo root):

    python3 -m venv bench/peers/pgqueuer/.venv
    bench/peers/pgqueuer/.venv/bin/pip install -r bench/peers/pgqueuer/requirements.txt
    bench/peers/pgqueuer/.venv/bin/python bench/peers/pgqueuer/bench.py --repeat 3 --json-out pgq.json
    bench/peers/pgqueuer/.venv/bin/python bench/peers/pgqueuer/bench.py --quick

What it does: creates `peer_pgq_<random>` on --database-url (default
postgres://postgres@127.0.0.1:5432/postgres), runs only the clinic reference
schema migration in it, one clinic and one patient, pgqueuer's own schema
(`Queries.install()`, default durability: every table logged) and an enqueue
trigger on clinic.visits. The row-level trigger (default) is a plain INSERT
into pgqueuer's queue table, which is how a team would enqueue from SQL;
pgqueuer's own statement trigger on that table sends the NOTIFY.
`--trigger statement` enqueues with one INSERT ... SELECT from a transition
table. The database is dropped at the end.

The receiver (aiohttp, 200 to every POST, arrival time per webhook-id) and
the worker (pgqueuer QueueManager on one asyncpg connection, as its docs
show, with an aiohttp keep-alive client and uvloop) run as child processes
of this script (`--role receiver`, `--role worker`). The task signs the
body the Standard Webhooks way and raises on a non-2xx, and
DatabaseRetryEntrypointExecutor turns that into a retry with backoff.

Scenarios and sizes are those of bench.mjs: throughput (20,000 visits in one
INSERT; --events), latency (200/s for 40 s; --latency-secs), trigger cost
(20,000 single-row transactions from 4 connections; --txns), --quick
(2,000 / 8 s / 4,000, 1 repetition), --repeat N (default 3), --only,
--json-out FILE, --keep-database. Worker settings: --batch-size,
--max-concurrent-tasks, --http-connections, --dequeue-timeout.

Worker settings (tuned): batch_size 50 (pgqueuer's default is 10),
max_concurrent_tasks unset, dequeue_timeout 1 s (LISTEN/NOTIFY does the
waking), 64 HTTP keep-alive connections. Tried on 2026-11-28 with
`--quick --only throughput --repeat 2` (2,000 events; another bench had the
machine 100 % busy, so read them as rough), events/s: batch 10: 715,
batch 50: 1,186, batch 100: 1,122, batch 50 + max_concurrent_tasks 100:
1,023. Latency, 4 s at 200/s: batch 10 p50/p99 10.4/40.7 ms, batch 50
3.5/13.5 ms.

A full run (--repeat 3) should take about 10 minutes on 2 cores.

Fairness: the task here does what graphile-worker's does; pgqueuer itself
also writes small status rows to pgqueuer_log (job id, status, entrypoint)
as its own bookkeeping, which graphile-worker does not. Every run starts with
pgqueuer, pgqueuer_log and pgqueuer_statistics truncated. Neither writes the full request and
response log that clinic-webhooks keeps per attempt.

Progress goes to stderr; stdout carries only the table.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import os
import secrets
import signal
import statistics
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

HERE = Path(__file__).resolve().parent
MIGRATION = HERE / "../../../migrations/20261128000001_clinic_reference_schema.sql"
SECRET = "whsec_" + base64.b64encode(b"clinic-webhooks peer bench secret").decode()

CLINIC_ID = 1
MEMBER_ID = 1
INSERT_ONE = """INSERT INTO clinic.visits (clinic_id, member_id, start_at, end_at)
  VALUES ($1, $2, now(), now() + interval '15 minutes')"""
INSERT_ONE_RETURNING = INSERT_ONE + " RETURNING id"
INSERT_MANY = """INSERT INTO clinic.visits (clinic_id, member_id, start_at, end_at)
  SELECT $1, $2, now() + g * interval '1 minute', now() + g * interval '1 minute' + interval '15 minutes'
    FROM generate_series(1, $3::bigint) g"""


def visit_json(v: str) -> str:
    return f"""json_build_object(
    'id', {v}.id, 'clinic_id', {v}.clinic_id, 'member_id', {v}.member_id,
    'provider_id', {v}.provider_id, 'type', {v}.type, 'start_at', {v}.start_at,
    'end_at', {v}.end_at, 'actual_start', {v}.actual_start, 'actual_end', {v}.actual_end,
    'status', {v}.status, 'status_updated_by', {v}.status_updated_by, 'created_at', {v}.created_at)"""


TRIGGER_SQL = {
    # pgqueuer's payload is bytea; its NOTIFY comes from its own trigger on
    # the queue table.
    "row": f"""
    CREATE FUNCTION clinic.visits_enqueue_webhook() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      INSERT INTO pgqueuer (priority, entrypoint, payload, status)
      VALUES (0, 'deliver', convert_to({visit_json('NEW')}::text, 'UTF8'), 'queued');
      RETURN NULL;
    END $$;
    CREATE TRIGGER visits_enqueue_webhook AFTER INSERT ON clinic.visits
      FOR EACH ROW EXECUTE FUNCTION clinic.visits_enqueue_webhook();""",
    "statement": f"""
    CREATE FUNCTION clinic.visits_enqueue_webhooks() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      INSERT INTO pgqueuer (priority, entrypoint, payload, status)
      SELECT 0, 'deliver', convert_to({visit_json('v')}::text, 'UTF8'), 'queued' FROM new_visits v;
      RETURN NULL;
    END $$;
    CREATE TRIGGER visits_enqueue_webhooks AFTER INSERT ON clinic.visits
      REFERENCING NEW TABLE AS new_visits
      FOR EACH STATEMENT EXECUTE FUNCTION clinic.visits_enqueue_webhooks();""",
}


def now_ms() -> float:
    # CLOCK_MONOTONIC: the same clock in every process, so the receiver's
    # arrival times and this process's commit times subtract directly.
    return time.monotonic_ns() / 1e6


def log(*a) -> None:
    print(f"[peer-pgq {datetime.now().strftime('%H:%M:%S')}]", *a, file=sys.stderr, flush=True)


# ------------------------------------------------------------------ receiver


def receiver_main() -> None:
    from aiohttp import web

    state = {"count": 0, "first": {}, "first_at": None, "waiters": []}

    def settle():
        still = []
        for n, fut in state["waiters"]:
            if state["count"] >= n:
                if not fut.done():
                    fut.set_result(now_ms())
            else:
                still.append((n, fut))
        state["waiters"] = still

    async def hook(request):
        await request.read()
        t = now_ms()
        state["count"] += 1
        if state["first_at"] is None:
            state["first_at"] = t
        wid = request.headers.get("webhook-id")
        if wid is not None and wid not in state["first"]:
            state["first"][wid] = t
        settle()
        return web.Response(status=200)

    async def wait(request):
        n = int(request.query["n"])
        fut = asyncio.get_running_loop().create_future()
        state["waiters"].append((n, fut))
        settle()
        return web.json_response({"t": await fut, "count": state["count"]})

    async def stats(_):
        return web.json_response({"count": state["count"], "distinct": len(state["first"]), "first_at": state["first_at"]})

    async def arrivals(_):
        return web.json_response(list(state["first"].items()))

    async def reset(_):
        for _n, fut in state["waiters"]:
            fut.cancel()
        state.update(count=0, first={}, first_at=None, waiters=[])
        return web.json_response({"ok": True})

    async def main():
        app = web.Application()
        app.add_routes([web.post("/hooks", hook), web.get("/_wait", wait), web.get("/_stats", stats),
                        web.get("/_arrivals", arrivals), web.post("/_reset", reset)])
        # keepalive_timeout: the worker's connections outlive the pauses between runs.
        runner = web.AppRunner(app, access_log=None, keepalive_timeout=60)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        print(f"READY {port}", flush=True)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await runner.cleanup()

    import uvloop
    uvloop.run(main())


# -------------------------------------------------------------------- worker


def worker_main(settings: dict) -> None:
    import aiohttp
    import asyncpg
    import uvloop
    from pgqueuer import AsyncpgDriver, DatabaseRetryEntrypointExecutor, Job, Queries, QueueManager

    key = base64.b64decode(settings["secret"].removeprefix("whsec_"))

    async def main():
        conn = await asyncpg.connect(settings["url"])
        qm = QueueManager(Queries(AsyncpgDriver(conn)))
        http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=settings["http_connections"], keepalive_timeout=60),
            timeout=aiohttp.ClientTimeout(total=30),
        )

        # Retries with backoff, as graphile-worker does by default
        # (pgqueuer's default would drop a failed job).
        @qm.entrypoint(
            "deliver",
            executor_factory=lambda p: DatabaseRetryEntrypointExecutor(parameters=p, max_attempts=25),
        )
        async def deliver(job: Job) -> None:
            payload = json.loads(job.payload)
            # The visit id names the message: stable across retries, and the
            # bench matches arrivals to commits with it.
            wid = f"msg_visit_{payload['id']}"
            ts = str(int(time.time()))
            body = json.dumps({"type": "visit.created",
                               "timestamp": datetime.now(timezone.utc).isoformat(),
                               "data": payload}, separators=(",", ":"))
            sig = base64.b64encode(hmac.new(key, f"{wid}.{ts}.{body}".encode(), hashlib.sha256).digest()).decode()
            async with http.post(settings["receiver_url"], data=body, headers={
                "content-type": "application/json", "webhook-id": wid,
                "webhook-timestamp": ts, "webhook-signature": f"v1,{sig}",
            }) as res:
                await res.read()
                if not 200 <= res.status < 300:
                    raise RuntimeError(f"receiver answered {res.status} for {wid}")

        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, qm.shutdown.set)
        try:
            await qm.run(
                batch_size=settings["batch_size"],
                max_concurrent_tasks=settings["max_concurrent_tasks"] or None,
                dequeue_timeout=timedelta(seconds=settings["dequeue_timeout"]),
            )
        finally:
            await http.close()

    uvloop.run(main())


# --------------------------------------------------------------------- bench


def percentile(sorted_xs, p):
    i = max(0, min(len(sorted_xs) - 1, -(-len(sorted_xs) * p // 100) - 1))
    return sorted_xs[int(i)]


def cpu_snapshot(pids: dict) -> dict:
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    procs = {}
    for name, pid in pids.items():
        try:
            s = Path(f"/proc/{pid}/stat").read_text()
            rest = s[s.rindex(")") + 2:].split(" ")
            procs[name] = int(rest[11]) + int(rest[12])
        except OSError:
            procs[name] = None
    return {"total": sum(f), "idle": f[3] + f[4], "procs": procs}


def cpu_split(a, b) -> dict:
    total = (b["total"] - a["total"]) or 1
    out = {"machine_busy_pct": 100 * (total - (b["idle"] - a["idle"])) / total}
    for name, v in a["procs"].items():
        if v is not None and b["procs"].get(name) is not None:
            out[f"{name}_pct"] = 100 * (b["procs"][name] - v) / total
    return out


class Child:
    """A child process of this script in another role."""

    def __init__(self, role: str, *args: str):
        self.role = role
        self.args = args

    async def start(self, ready_line: bool):
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, str(Path(__file__).resolve()), "--role", self.role, *self.args,
            stdout=asyncio.subprocess.PIPE if ready_line else asyncio.subprocess.DEVNULL)
        if ready_line:
            line = await asyncio.wait_for(self.proc.stdout.readline(), 30)
            if not line.startswith(b"READY"):
                raise RuntimeError(f"{self.role} did not start: {line!r}")
            return line.decode().split()[1]

    async def stop(self, grace=15):
        if self.proc.returncode is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), grace)
        except asyncio.TimeoutError:
            log(f"{self.role} did not stop in {grace} s; killing it")
            self.proc.kill()
            await self.proc.wait()


async def bench(opt) -> int:
    import aiohttp
    import asyncpg
    from pgqueuer import AsyncpgDriver, Queries
    from importlib.metadata import version as pkg_version

    pgq_version = pkg_version("pgqueuer")
    plan = {
        "repeat": opt.repeat or (1 if opt.quick else 3),
        "events": opt.events or (2000 if opt.quick else 20000),
        "latency_secs": opt.latency_secs or (8 if opt.quick else 40),
        "latency_rate": 200,
        "txns": opt.txns or (4000 if opt.quick else 20000),
        "clients": 4,
        "trigger": opt.trigger,
        "scenarios": [s for x in (opt.only or ["throughput", "latency", "trigger"]) for s in x.split(",")],
    }
    worker_settings = {
        "batch_size": opt.batch_size,
        "max_concurrent_tasks": opt.max_concurrent_tasks,
        "http_connections": opt.http_connections,
        "dequeue_timeout": opt.dequeue_timeout,
        "secret": SECRET,
    }

    admin = await asyncpg.connect(opt.database_url)
    name = f"peer_pgq_{secrets.token_hex(5)}"
    await admin.execute(f"CREATE DATABASE {name}")
    u = urlsplit(opt.database_url)
    url = urlunsplit((u.scheme, u.netloc, f"/{name}", u.query, u.fragment))
    pool = receiver = http = None
    try:
        pool = await asyncpg.create_pool(url, min_size=1, max_size=3)
        log(f"database {name}; pgqueuer {pgq_version}, python {sys.version.split()[0]}; {plan['trigger']}-level trigger")
        await pool.execute(MIGRATION.read_text())
        await pool.execute("INSERT INTO clinic.clinics (id, code, name) VALUES ($1, 'bench', 'Bench clinic')", CLINIC_ID)
        await pool.execute("INSERT INTO clinic.users (id, clinic_id, role, source) VALUES ($1, $2, 'patient', 'signup')", MEMBER_ID, CLINIC_ID)
        async with pool.acquire() as c:
            await Queries(AsyncpgDriver(c)).install()
        await pool.execute(TRIGGER_SQL[plan["trigger"]])
        server = dict(await pool.fetchrow(
            "SELECT version() AS version, current_setting('fsync') AS fsync, current_setting('synchronous_commit') AS synchronous_commit"))

        receiver = Child("receiver")
        port = await receiver.start(ready_line=True)
        recv_url = f"http://127.0.0.1:{port}"
        http = aiohttp.ClientSession()

        async def rget(path, timeout=None):
            async with http.get(recv_url + path, timeout=aiohttp.ClientTimeout(total=timeout)) as r:
                return await r.json()

        async def rreset():
            async with http.post(recv_url + "/_reset") as r:
                await r.read()

        async def jobs_left():
            return await pool.fetchval("SELECT count(*) FROM pgqueuer")

        async def wait_delivered(n, timeout):
            deadline = now_ms() + timeout * 1000
            await rget(f"/_wait?n={n}", timeout)
            while True:
                if await jobs_left() == 0:
                    return now_ms()
                if now_ms() > deadline:
                    raise RuntimeError("timed out waiting for the queue to empty")
                await asyncio.sleep(0.005)

        async def reset():
            await pool.execute("TRUNCATE pgqueuer, pgqueuer_log, pgqueuer_statistics, clinic.invoices, clinic.visit_notes, clinic.visits")

        async def checkpoint():
            try:
                await pool.execute("CHECKPOINT")
            except asyncpg.PostgresError:
                pass

        async def wal_lsn():
            return await pool.fetchval("SELECT pg_current_wal_lsn()::text")

        async def wal_since(lsn):
            return int(await pool.fetchval("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::text::pg_lsn)::bigint", lsn))

        async def with_worker(body):
            worker = Child("worker", json.dumps({**worker_settings, "url": url, "receiver_url": recv_url + "/hooks"}))
            await worker.start(ready_line=False)
            try:
                # The warm-up delivery is also the readiness check: pgqueuer
                # LISTENs before its first dequeue, and its dequeue_timeout
                # poll would pick the job up even if the NOTIFY came early.
                await rreset()
                await pool.execute(INSERT_ONE, CLINIC_ID, MEMBER_ID)
                died = asyncio.ensure_future(worker.proc.wait())
                warm = asyncio.ensure_future(wait_delivered(1, 30))
                await asyncio.wait([died, warm], return_when=asyncio.FIRST_COMPLETED)
                if not warm.done():
                    warm.cancel()
                    raise RuntimeError(f"the worker exited ({worker.proc.returncode}) before its first delivery")
                died.cancel()
                await warm
                await rreset()
                await checkpoint()
                return await body(worker)
            finally:
                await worker.stop()

        async def throughput():
            n = plan["events"]
            await reset()

            async def body(worker):
                pids = {"bench": os.getpid(), "worker": worker.proc.pid, "receiver": receiver.proc.pid}
                wal0 = await wal_lsn()
                cpu0 = cpu_snapshot(pids)
                started = now_ms()
                await pool.execute(INSERT_MANY, CLINIC_ID, MEMBER_ID, n)
                committed = now_ms()
                done = await wait_delivered(n, 60 + n / 50)
                cpu = cpu_split(cpu0, cpu_snapshot(pids))
                wal = await wal_since(wal0)
                st = await rget("/_stats")
                return {"events": n, "events_per_s": n / ((done - committed) / 1000), "insert_ms": committed - started,
                        "commit_to_first_arrival_ms": st["first_at"] - committed, "requests": st["count"],
                        "duplicates": st["count"] - st["distinct"], "wal_bytes_per_event": wal / n, "cpu": cpu}
            return await with_worker(body)

        async def latency():
            n = round(plan["latency_secs"] * plan["latency_rate"])
            period = 1000 / plan["latency_rate"]
            await reset()

            async def body(_worker):
                conn = await asyncpg.connect(url)
                commits = {}
                started = now_ms()
                try:
                    stmt = await conn.prepare(INSERT_ONE_RETURNING)
                    for i in range(n):
                        wait = started + i * period - now_ms()
                        if wait > 0:
                            await asyncio.sleep(wait / 1000)
                        vid = await stmt.fetchval(CLINIC_ID, MEMBER_ID)
                        commits[f"msg_visit_{vid}"] = now_ms()
                finally:
                    await conn.close()
                send_s = (now_ms() - started) / 1000
                await wait_delivered(n, 60)
                lat, early = [], 0
                for wid, t in await rget("/_arrivals"):
                    c = commits.get(wid)
                    if c is None:
                        continue
                    early += t < c
                    lat.append(max(0.0, t - c))
                lat.sort()
                return {"events": n, "rate_per_s": n / send_s, "matched": len(lat), "arrivals_before_ack": early,
                        "p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99), "max_ms": lat[-1]}
            return await with_worker(body)

        async def insert_load(pids):
            conns = [await asyncpg.connect(url) for _ in range(plan["clients"])]
            try:
                await checkpoint()
                wal0 = await wal_lsn()
                cpu0 = cpu_snapshot(pids)
                started = now_ms()

                async def client(c, share):
                    stmt = await c.prepare(INSERT_ONE)
                    for _ in range(share):
                        await stmt.fetch(CLINIC_ID, MEMBER_ID)
                k = plan["clients"]
                await asyncio.gather(*(client(c, plan["txns"] // k + (i < plan["txns"] % k)) for i, c in enumerate(conns)))
                seconds = (now_ms() - started) / 1000
                cpu = cpu_split(cpu0, cpu_snapshot(pids))
                wal = await wal_since(wal0)
                return {"txns": plan["txns"], "clients": k, "seconds": seconds, "txns_per_s": plan["txns"] / seconds,
                        "wal_bytes_per_txn": wal / plan["txns"], "cpu": cpu}
            finally:
                for c in conns:
                    await c.close()

        async def trigger_cost():
            await reset()
            await pool.execute("ALTER TABLE clinic.visits DISABLE TRIGGER USER")
            try:
                baseline = await insert_load({"bench": os.getpid()})
            finally:
                await pool.execute("ALTER TABLE clinic.visits ENABLE TRIGGER USER")
            await reset()
            stopped = await insert_load({"bench": os.getpid()})
            await reset()

            async def body(worker):
                load = await insert_load({"bench": os.getpid(), "worker": worker.proc.pid, "receiver": receiver.proc.pid})
                last = now_ms()
                during = (await rget("/_stats"))["count"]
                done = await wait_delivered(plan["txns"], 60 + plan["txns"] / 100)
                return {**load, "delivered_during_inserts": during, "drain_s": (done - last) / 1000}
            running = await with_worker(body)
            return {"baseline": baseline, "worker_stopped": stopped, "worker_running": running,
                    "ratio_stopped": stopped["txns_per_s"] / baseline["txns_per_s"],
                    "ratio_running": running["txns_per_s"] / baseline["txns_per_s"]}

        scenarios = {"throughput": throughput, "latency": latency, "trigger": trigger_cost}
        began = datetime.now(timezone.utc)
        samples: dict[str, list] = {}
        for rep in range(1, plan["repeat"] + 1):
            for s in plan["scenarios"]:
                log(f"{s}, repetition {rep}/{plan['repeat']}")
                r = await scenarios[s]()
                log(f"{s}: {json.dumps(r)}")
                samples.setdefault(s, []).append(r)

        spread = summarise(samples)
        title = (f"pgqueuer {pgq_version} (python {sys.version.split()[0]}, {plan['trigger']}-level trigger)"
                 f"{' — QUICK sizes, not comparable with full runs' if opt.quick else ''}; {plan['repeat']} repetition(s)")
        print(f"{title}\n\n{table(spread, plan)}")
        if opt.json_out:
            out = {"peer": "pgqueuer", "version": pgq_version, "python": sys.version.split()[0], "quick": opt.quick,
                   "started_at": began.isoformat(), "finished_at": datetime.now(timezone.utc).isoformat(),
                   **{k: v["median"] for k, v in spread.items()}, "spread": spread, "samples": samples, "plan": plan,
                   "worker_settings": {k: v for k, v in worker_settings.items() if k != "secret"},
                   "machine": {"cpus": os.cpu_count(), "kernel": os.uname().release}, "server": server}
            Path(opt.json_out).write_text(json.dumps(out, indent=2) + "\n")
            log(f"wrote {opt.json_out}")
        return 0
    finally:
        if http:
            await http.close()
        if receiver:
            await receiver.stop(2)
        if pool:
            await pool.close()
        if opt.keep_database:
            log(f"kept database {name}")
        else:
            await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()


MEASURES = {
    "throughput": {
        "throughput_events_per_s": ("end to end: %N visits in one INSERT", "events/s", 0, lambda r: r["events_per_s"]),
        "throughput_insert_ms": ("  the INSERT itself (trigger + commit)", "ms", 0, lambda r: r["insert_ms"]),
        "throughput_commit_to_first_arrival_ms": ("  commit → first arrival", "ms", 1, lambda r: r["commit_to_first_arrival_ms"]),
        "throughput_wal_bytes_per_event": ("  WAL per event, insert + delivery", "B", 0, lambda r: r["wal_bytes_per_event"]),
        "throughput_machine_busy_pct": ("  machine CPU busy during delivery", "%", 0, lambda r: r["cpu"]["machine_busy_pct"]),
        "throughput_worker_cpu_pct": ("  … of which the worker process", "%", 0, lambda r: r["cpu"].get("worker_pct")),
        "throughput_receiver_cpu_pct": ("  … of which the receiver process", "%", 0, lambda r: r["cpu"].get("receiver_pct")),
        "throughput_duplicates": ("  duplicate requests at the receiver", "", 0, lambda r: r["duplicates"]),
    },
    "latency": {
        "latency_p50_ms": ("latency p50, 200/s single-row inserts", "ms", 2, lambda r: r["p50_ms"]),
        "latency_p99_ms": ("latency p99", "ms", 2, lambda r: r["p99_ms"]),
        "latency_rate_per_s": ("  achieved insert rate", "/s", 0, lambda r: r["rate_per_s"]),
        "latency_arrivals_before_ack": ("  arrivals before the commit ack (0 ms)", "", 0, lambda r: r["arrivals_before_ack"]),
    },
    "trigger": {
        "trigger_ratio": ("trigger cost, worker stopped", "×", 2, lambda r: r["ratio_stopped"]),
        "trigger_ratio_worker_running": ("trigger cost, worker delivering", "×", 2, lambda r: r["ratio_running"]),
        "trigger_baseline_txns_per_s": ("  inserts/s without trigger", "/s", 0, lambda r: r["baseline"]["txns_per_s"]),
        "trigger_stopped_txns_per_s": ("  inserts/s with trigger, worker stopped", "/s", 0, lambda r: r["worker_stopped"]["txns_per_s"]),
        "trigger_running_txns_per_s": ("  inserts/s with trigger, worker delivering", "/s", 0, lambda r: r["worker_running"]["txns_per_s"]),
        "trigger_baseline_wal_bytes_per_txn": ("  WAL per insert without trigger", "B", 0, lambda r: r["baseline"]["wal_bytes_per_txn"]),
        "trigger_stopped_wal_bytes_per_txn": ("  WAL per insert with trigger", "B", 0, lambda r: r["worker_stopped"]["wal_bytes_per_txn"]),
        "trigger_running_drain_s": ("  drain after the last insert (worker on)", "s", 1, lambda r: r["worker_running"]["drain_s"]),
    },
}


def summarise(samples):
    spread = {}
    for scenario, runs in samples.items():
        for key, (*_, get) in MEASURES[scenario].items():
            xs = [x for x in map(get, runs) if isinstance(x, (int, float))]
            if xs:
                spread[key] = {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "samples": xs}
    return spread


def table(spread, plan):
    rows = [("measure", "median", "min – max")]
    for scenario in MEASURES.values():
        for key, (label, unit, digits, _) in scenario.items():
            if key not in spread:
                continue
            s = spread[key]
            f = lambda x: f"{x:,.{digits}f}"  # noqa: E731
            rows.append((label.replace("%N", f"{plan['events']:,}"), f"{f(s['median'])} {unit}".strip(),
                         f"{f(s['min'])} – {f(s['max'])}" if len(s["samples"]) > 1 else ""))
    w = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(f"{r[0]:<{w[0]}}  {r[1]:>{w[1]}}  {r[2]}".rstrip() for r in rows)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--role", choices=["bench", "receiver", "worker"], default="bench", help=argparse.SUPPRESS)
    p.add_argument("settings", nargs="?", help=argparse.SUPPRESS)
    p.add_argument("--database-url", default="postgres://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--repeat", type=int)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--only", nargs="+", choices=["throughput", "latency", "trigger"])
    p.add_argument("--json-out")
    p.add_argument("--latency-secs", type=float)
    p.add_argument("--events", type=int)
    p.add_argument("--txns", type=int)
    p.add_argument("--trigger", choices=["row", "statement"], default="row")
    p.add_argument("--keep-database", action="store_true")
    # Defaults: the best of the tuning tried (see the report with this file).
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--max-concurrent-tasks", type=int, default=0)
    p.add_argument("--http-connections", type=int, default=64)
    p.add_argument("--dequeue-timeout", type=float, default=1.0, help="seconds between polls when no NOTIFY comes")
    opt = p.parse_args()
    if opt.role == "receiver":
        receiver_main()
        return 0
    if opt.role == "worker":
        worker_main(json.loads(opt.settings))
        return 0
    import uvloop
    return uvloop.run(bench(opt))


if __name__ == "__main__":
    sys.exit(main())
