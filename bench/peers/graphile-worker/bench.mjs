#!/usr/bin/env node
// # Peer bench: graphile-worker + a small HTTP task (issue 3)
//
// Issue 3 compares clinic-webhooks with what a team would otherwise build:
// a general PostgreSQL job queue, a trigger that enqueues a job per visit,
// and a task that POSTs a signed webhook. This script measures that peer
// with the workload of `clinic-webhooks bench` (see BENCHMARKS.md, "What
// each scenario does"), on the same machine, so the two can be compared
// like with like.
//
// ## Run it
//
//     cd bench/peers/graphile-worker && npm ci      # once; exact versions from package-lock.json
//     node bench/peers/graphile-worker/bench.mjs --repeat 3 --json-out gw.json   # from the repo root
//     node bench/peers/graphile-worker/bench.mjs --quick                         # small sizes, 1 repetition
//
// graphile-worker 0.18 needs Node >= 22.18. `npm ci` also installs a pinned
// Node (the `node` package, 24.x, from the npm registry) into node_modules;
// when this script is started with an older Node it re-runs itself with
// that one, so the command above works with any system Node. `npm run bench
// -- --quick` does the same. (npm 11 warns that the `node` package's
// preinstall script is "not yet covered by allowScripts" but runs it; if a
// later npm refuses, `npm install-scripts approve node` and `npm ci` again.)
//
// Options: --database-url URL (default postgres://postgres@127.0.0.1:5432/postgres;
// the server to create `peer_gw_<random>` on), --repeat N (default 3; 1 with
// --quick), --quick, --only throughput,latency,trigger, --json-out FILE,
// --latency-secs S, --events N, --txns N, --trigger row|statement (default
// row), --keep-database, and the worker settings --concurrency,
// --max-pool-size, --poll-interval, --local-queue (0 = off),
// --complete-batch-delay (ms, -1 = off; also used for failed jobs).
//
// A full run (--repeat 3, row-level trigger) should take about 10 minutes on a
// 2-core machine: per repetition ~30 s throughput (the 20,000-row INSERT
// with a row-level trigger alone takes 10-20 s), ~45 s latency, ~100 s
// trigger cost.
//
// ## What it does
//
// 1. Creates a private database `peer_gw_<random>`, runs only
//    migrations/20261128000001_clinic_reference_schema.sql in it (the app's
//    tables, not the clinic-webhooks schema), inserts one clinic and one
//    patient, installs graphile-worker's schema (`runMigrations`) and an
//    enqueue trigger on clinic.visits. It drops the database at the end.
//    Server settings are left as they are (default durability: fsync and
//    synchronous_commit on).
// 2. The enqueue trigger is what graphile-worker's docs show: an AFTER
//    INSERT ... FOR EACH ROW trigger calling
//    `graphile_worker.add_job('deliver', json_build_object(...))`.
//    `--trigger statement` uses a statement-level trigger with a transition
//    table and one `graphile_worker.add_jobs(array)` call instead.
// 3. receiver.mjs (child process): node:http on 127.0.0.1, 200 to every
//    POST, arrival time per `webhook-id`.
// 4. worker.mjs (child process, one per run, as it would be deployed):
//    graphile-worker `run()` with the task `deliver`, which builds a JSON
//    body, signs it the Standard Webhooks way (HMAC-SHA256 over
//    `${id}.${timestamp}.${body}`, `webhook-signature: v1,<base64>`) and
//    POSTs it through an undici keep-alive pool; a non-2xx throws, so
//    graphile-worker retries.
// 5. Scenarios, each run starting from empty tables, a worker that already
//    LISTENs, one warm-up delivery and a CHECKPOINT, like the product's bench:
//    a. throughput: N visits (20,000) in one INSERT ... SELECT generate_series;
//       clock from the INSERT's commit until the receiver has N requests and
//       graphile_worker._private_jobs is empty (polled every 5 ms). events/s.
//    b. latency: single-row INSERT ... RETURNING id at a steady 200/s for 40 s
//       from a connection of its own; commit (the client's acknowledgement)
//       → arrival at the receiver, matched by the visit id in webhook-id.
//       An arrival that beats the acknowledgement counts as 0 ms. p50/p99.
//    c. trigger cost: 20,000 single-row INSERT transactions from 4
//       connections with a prepared statement, (1) with the trigger disabled
//       (ALTER TABLE clinic.visits DISABLE TRIGGER USER; FK triggers stay),
//       (2) trigger on, worker stopped, (3) trigger on, worker delivering.
//       Ratios (2)/(1) and (3)/(1).
//    Repetitions are interleaved (repetition 1 of every scenario, then 2, ...)
//    and the table shows median and min–max.
//
// ## Worker settings (tuned)
//
// Defaults: concurrency 64, maxPoolSize 66 (the docs' concurrency + 2),
// localQueue.size 65 (the docs' concurrency + 1), completeJobBatchDelay and
// failJobBatchDelay 5 ms, pollInterval 1 s (LISTEN/NOTIFY does the waking),
// INFO logging off (worker.mjs), one undici keep-alive pool with
// `concurrency` connections. Tried on 2026-11-28 with `--quick --only
// throughput --repeat 2` (2,000 events; noisy, another bench shared the
// machine), events/s:
//
//   concurrency 32, no local queue, no batching (graphile's defaults)    790
//   concurrency 64, no local queue, no batching                          730
//   concurrency 32, localQueue 33                                      1,035
//   concurrency 32, localQueue 33, completeJobBatchDelay 0             1,400
//   concurrency 64, localQueue 65, completeJobBatchDelay 0             1,910
//   concurrency 64, localQueue 65, completeJobBatchDelay 5             2,080  ← default
//   concurrency 64, localQueue 65, completeJobBatchDelay 50            2,260
//   concurrency 128, localQueue 129, completeJobBatchDelay 5           2,290
//   concurrency 64, localQueue 257, completeJobBatchDelay 5            2,280
//
// The last four are within this machine's noise; the latency run (4 s) gave
// p50 2.3 ms for the default against 3.2 ms for concurrency 32 without a
// local queue. A longer batch delay keeps finished jobs locked longer (they
// run again if the worker dies), so the small one is kept.
//
// ## Reading the numbers against clinic-webhooks
//
// * The peer does less per event than the product: it writes no log row
//   per call (the product writes the request and response of every attempt
//   to webhooks.attempts), has no endpoint table, no per-endpoint bulkhead,
//   no fan-out, and sends the raw row (no status-name lookup). Completed
//   jobs are simply deleted.
// * The insert clients are node-postgres here and sqlx in the product's
//   bench. The no-trigger rate is the denominator of the ratios, so compare
//   the absolute inserts/s too (printed and in the JSON).
// * The bench process, the worker, the receiver and PostgreSQL share the
//   machine's cores, as in the product's bench; the table prints the CPU split.
//
// Progress goes to stderr; stdout carries only the table.
import { spawnSync, fork } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const here = dirname(fileURLToPath(import.meta.url));

// graphile-worker 0.18 declares node >= 22.18. Rather than make the reader
// install a Node by hand, re-run under the one package.json pins.
{
  const [major, minor] = process.versions.node.split('.').map(Number);
  if (major < 22 || (major === 22 && minor < 18)) {
    const pinned = join(here, 'node_modules', '.bin', 'node');
    if (!existsSync(pinned)) {
      console.error(`Node ${process.versions.node} is too old for graphile-worker 0.18 and ${pinned} is missing: run \`npm ci\` in ${here}`);
      process.exit(2);
    }
    // Ctrl-C reaches both processes; this one waits for the inner one to
    // stop its children and drop the database.
    for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => {});
    const r = spawnSync(pinned, [fileURLToPath(import.meta.url), ...process.argv.slice(2)], { stdio: 'inherit' });
    process.exit(r.status ?? 1);
  }
}

const { default: pg } = await import('pg');
const { runMigrations, Logger } = await import('graphile-worker');
const gwVersion = JSON.parse(readFileSync(join(here, 'node_modules', 'graphile-worker', 'package.json'), 'utf8')).version;

// ---------------------------------------------------------------- options

// `--only throughput latency` (as the product's bench takes it) leaves the
// second name as a positional; those are taken as more --only names.
const { values: opt, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    'database-url': { type: 'string', default: 'postgres://postgres@127.0.0.1:5432/postgres' },
    repeat: { type: 'string' },
    quick: { type: 'boolean', default: false },
    only: { type: 'string', multiple: true },
    'json-out': { type: 'string' },
    'latency-secs': { type: 'string' },
    events: { type: 'string' },
    txns: { type: 'string' },
    trigger: { type: 'string', default: 'row' },
    'keep-database': { type: 'boolean', default: false },
    // Defaults: the best of the tuning tried (see the README block).
    concurrency: { type: 'string', default: '64' },
    'max-pool-size': { type: 'string' },
    'poll-interval': { type: 'string', default: '1000' },
    'local-queue': { type: 'string' },
    'complete-batch-delay': { type: 'string', default: '5' },
  },
});

const int = (s, name) => {
  const n = Number(s);
  if (!Number.isFinite(n)) throw new Error(`--${name} must be a number, not ${s}`);
  return n;
};
const plan = {
  repeat: int(opt.repeat ?? (opt.quick ? '1' : '3'), 'repeat'),
  events: int(opt.events ?? (opt.quick ? '2000' : '20000'), 'events'),
  latencySecs: int(opt['latency-secs'] ?? (opt.quick ? '8' : '40'), 'latency-secs'),
  latencyRate: 200,
  txns: int(opt.txns ?? (opt.quick ? '4000' : '20000'), 'txns'),
  clients: 4,
  trigger: opt.trigger,
  scenarios: (opt.only ? [...opt.only, ...positionals] : ['throughput', 'latency', 'trigger']).flatMap((s) => s.split(',')),
};
if (!['row', 'statement'].includes(plan.trigger)) throw new Error('--trigger is row or statement');
if (positionals.length && !opt.only) throw new Error(`unexpected arguments: ${positionals.join(' ')}`);
for (const s of plan.scenarios) {
  if (!['throughput', 'latency', 'trigger'].includes(s)) throw new Error(`unknown scenario ${s}`);
}
const concurrency = int(opt.concurrency, 'concurrency');
// What a tuned deployment would run with; the tuning tried is in the README
// block above and in the report that came with this script.
const workerSettings = {
  concurrency,
  // graphile-worker's docs: max(10, concurrency + 2).
  maxPoolSize: int(opt['max-pool-size'] ?? String(Math.max(10, concurrency + 2)), 'max-pool-size'),
  // LISTEN/NOTIFY wakes the worker; polling is only the safety net.
  pollInterval: int(opt['poll-interval'], 'poll-interval'),
  // The docs' starting point, concurrency + 1; 0 turns the local queue off.
  localQueueSize: int(opt['local-queue'] ?? String(concurrency + 1), 'local-queue'),
  completeJobBatchDelay: int(opt['complete-batch-delay'], 'complete-batch-delay'),
  failJobBatchDelay: int(opt['complete-batch-delay'], 'complete-batch-delay'),
  httpConnections: concurrency,
  secret: 'whsec_' + Buffer.from('clinic-webhooks peer bench secret').toString('base64'),
};

// ---------------------------------------------------------------- helpers

const nowMs = () => Number(process.hrtime.bigint()) / 1e6;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const log = (...a) => console.error(`[peer-gw ${new Date().toISOString().slice(11, 19)}]`, ...a);
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};
// Nearest rank, as the product's bench.
const percentile = (sorted, p) => sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))];
// The timer is cleared either way, so that a pending timeout does not keep
// the process alive after the bench is done.
function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

// CPU split over an interval: the machine (/proc/stat) and each process.
function cpuSnapshot(pids) {
  const f = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
  const total = f.reduce((a, b) => a + b, 0);
  const idle = f[3] + (f[4] ?? 0);
  const procs = {};
  for (const [name, pid] of Object.entries(pids)) {
    try {
      const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
      const rest = s.slice(s.lastIndexOf(')') + 2).split(' ');
      procs[name] = Number(rest[11]) + Number(rest[12]);
    } catch {
      procs[name] = null;
    }
  }
  return { total, idle, procs };
}
function cpuSplit(a, b) {
  const total = b.total - a.total || 1;
  const out = { machine_busy_pct: (100 * (total - (b.idle - a.idle))) / total };
  for (const name of Object.keys(a.procs)) {
    if (a.procs[name] != null && b.procs[name] != null) out[`${name}_pct`] = (100 * (b.procs[name] - a.procs[name])) / total;
  }
  return out;
}

// ---------------------------------------------------------------- database

const CLINIC_ID = 1;
const MEMBER_ID = 1;
const INSERT_ONE = `INSERT INTO clinic.visits (clinic_id, member_id, start_at, end_at)
  VALUES ($1, $2, now(), now() + interval '15 minutes')`;
const INSERT_ONE_RETURNING = `${INSERT_ONE} RETURNING id`;
const INSERT_MANY = `INSERT INTO clinic.visits (clinic_id, member_id, start_at, end_at)
  SELECT $1, $2, now() + g * interval '1 minute', now() + g * interval '1 minute' + interval '15 minutes'
    FROM generate_series(1, $3::bigint) g`;

// The visit as the webhook's payload: every column, as a team would send it.
const VISIT_JSON = (v) => `json_build_object(
    'id', ${v}.id, 'clinic_id', ${v}.clinic_id, 'member_id', ${v}.member_id,
    'provider_id', ${v}.provider_id, 'type', ${v}.type, 'start_at', ${v}.start_at,
    'end_at', ${v}.end_at, 'actual_start', ${v}.actual_start, 'actual_end', ${v}.actual_end,
    'status', ${v}.status, 'status_updated_by', ${v}.status_updated_by, 'created_at', ${v}.created_at)`;

const TRIGGER_SQL = {
  // graphile-worker's documented way: one add_job per row.
  row: `
    CREATE FUNCTION clinic.visits_enqueue_webhook() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      PERFORM graphile_worker.add_job('deliver', ${VISIT_JSON('NEW')});
      RETURN NULL;
    END $$;
    CREATE TRIGGER visits_enqueue_webhook AFTER INSERT ON clinic.visits
      FOR EACH ROW EXECUTE FUNCTION clinic.visits_enqueue_webhook();`,
  // One add_jobs call per statement: the bulk INSERT pays one function call
  // instead of 20,000.
  statement: `
    CREATE FUNCTION clinic.visits_enqueue_webhooks() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE specs graphile_worker.job_spec[];
    BEGIN
      SELECT array_agg(ROW('deliver', ${VISIT_JSON('v')}, NULL, NULL, NULL, NULL, NULL, NULL)::graphile_worker.job_spec)
        INTO specs FROM new_visits v;
      IF specs IS NOT NULL THEN
        PERFORM graphile_worker.add_jobs(specs);
      END IF;
      RETURN NULL;
    END $$;
    CREATE TRIGGER visits_enqueue_webhooks AFTER INSERT ON clinic.visits
      REFERENCING NEW TABLE AS new_visits
      FOR EACH STATEMENT EXECUTE FUNCTION clinic.visits_enqueue_webhooks();`,
};

class BenchDb {
  static async create(serverUrl) {
    const admin = new pg.Client({ connectionString: serverUrl });
    await admin.connect();
    const name = `peer_gw_${randomBytes(5).toString('hex')}`;
    await admin.query(`CREATE DATABASE ${name}`);
    const url = new URL(serverUrl);
    url.pathname = `/${name}`;
    const db = new BenchDb(admin, name, url.toString());
    return db;
  }

  constructor(admin, name, url) {
    this.admin = admin;
    this.name = name;
    this.url = url;
    this.pool = new pg.Pool({ connectionString: url, max: 3 });
    this.pool.on('error', () => {}); // idle clients dropped with the database
  }

  q(text, values) {
    return this.pool.query(text, values);
  }

  async setUp(trigger) {
    const schema = readFileSync(resolve(here, '../../../migrations/20261128000001_clinic_reference_schema.sql'), 'utf8');
    await this.q(schema);
    await this.q(`INSERT INTO clinic.clinics (id, code, name) VALUES ($1, 'bench', 'Bench clinic')`, [CLINIC_ID]);
    await this.q(`INSERT INTO clinic.users (id, clinic_id, role, source) VALUES ($1, $2, 'patient', 'signup')`, [MEMBER_ID, CLINIC_ID]);
    await runMigrations({ connectionString: this.url, logger: quietLogger() });
    await this.q(TRIGGER_SQL[trigger]);
  }

  async reset() {
    await this.q('TRUNCATE graphile_worker._private_jobs, clinic.invoices, clinic.visit_notes, clinic.visits');
  }

  // Needs a superuser (the default URL is one); skipped otherwise.
  async checkpoint() {
    await this.q('CHECKPOINT').catch(() => {});
  }

  async triggers(on) {
    await this.q(`ALTER TABLE clinic.visits ${on ? 'ENABLE' : 'DISABLE'} TRIGGER USER`);
  }

  async jobsLeft() {
    const { rows } = await this.q('SELECT count(*)::int AS n FROM graphile_worker._private_jobs');
    return rows[0].n;
  }

  async walLsn() {
    return (await this.q('SELECT pg_current_wal_lsn()::text AS l')).rows[0].l;
  }

  async walSince(lsn) {
    return Number((await this.q('SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1)::bigint AS d', [lsn])).rows[0].d);
  }

  async client() {
    const c = new pg.Client({ connectionString: this.url });
    c.on('error', () => {});
    await c.connect();
    return c;
  }

  async drop() {
    await this.pool.end().catch(() => {});
    await this.admin.query(`DROP DATABASE IF EXISTS ${this.name} WITH (FORCE)`);
    await this.admin.end();
  }
}

// graphile-worker's default logger prints every step at INFO; keep only
// what needs a reader's attention.
function quietLogger() {
  return new Logger(() => (level, message) => {
    if (level === 'error' || level === 'warning') log(`graphile-worker ${level}: ${message}`);
  });
}

// ---------------------------------------------------------------- children

// A child process that answers {id}-tagged requests over IPC.
class Child {
  constructor(file, args, name) {
    this.name = name;
    this.proc = fork(join(here, file), args, { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    this.pending = new Map();
    this.nextId = 1;
    this.readyListeners = [];
    this.exited = new Promise((r) => this.proc.once('exit', (code, sig) => r({ code, sig })));
    this.proc.on('message', (msg) => {
      if (msg.ready) {
        this.readyMsg = msg;
        for (const l of this.readyListeners) l(msg);
        return;
      }
      const p = this.pending.get(msg.id);
      if (p) {
        this.pending.delete(msg.id);
        msg.error ? p.reject(new Error(msg.error)) : p.resolve(msg);
      }
    });
  }

  ready(timeoutMs) {
    const ready = new Promise((r) => (this.readyMsg ? r(this.readyMsg) : this.readyListeners.push(r)));
    const died = this.exited.then(({ code, sig }) => {
      throw new Error(`${this.name} exited (${code ?? sig}) before it was ready`);
    });
    return withTimeout(Promise.race([ready, died]), timeoutMs, `${this.name} to start`);
  }

  call(msg) {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.proc.send({ ...msg, id });
    });
  }

  async stop(graceMs = 15_000) {
    if (this.proc.exitCode !== null || this.proc.signalCode !== null) return;
    if (this.proc.connected) this.proc.send({ cmd: 'stop' });
    else this.proc.kill('SIGTERM');
    const r = await withTimeout(this.exited, graceMs, `${this.name} to stop`).catch(() => null);
    if (r === null) {
      log(`${this.name} did not stop in ${graceMs} ms; killing it`);
      this.proc.kill('SIGKILL');
      await this.exited;
    }
  }
}

async function startReceiver() {
  const r = new Child('receiver.mjs', [], 'receiver');
  const { port } = await r.ready(10_000);
  r.url = `http://127.0.0.1:${port}/hooks`;
  r.pid = r.proc.pid;
  return r;
}

async function startWorker(db, receiver) {
  const w = new Child('worker.mjs', [JSON.stringify({ ...workerSettings, connectionString: db.url, receiverUrl: receiver.url })], 'worker');
  await w.ready(30_000);
  return w;
}

// Waits until the receiver has `n` requests and no job is left: every job
// was delivered and graphile-worker has deleted it. Returns the time the
// database was first seen empty.
async function waitDelivered(db, receiver, n, timeoutMs) {
  const deadline = nowMs() + timeoutMs;
  // The receiver's count costs the database nothing; poll the tail only.
  await withTimeout(receiver.call({ cmd: 'wait', n }), timeoutMs, `${n} requests at the receiver`);
  for (;;) {
    if ((await db.jobsLeft()) === 0) return nowMs();
    if (nowMs() > deadline) throw new Error('timed out waiting for graphile-worker to delete its jobs');
    await sleep(5);
  }
}

// One visit delivered end to end, so that every connection (pool, LISTEN,
// HTTP keep-alive) exists before the clock starts.
async function warmUp(db, receiver) {
  await receiver.call({ cmd: 'reset' });
  await db.q(INSERT_ONE, [CLINIC_ID, MEMBER_ID]);
  await waitDelivered(db, receiver, 1, 30_000);
  await receiver.call({ cmd: 'reset' });
}

// Starts a worker, warms up, runs `body(worker)`, and always stops the worker.
let activeWorker = null; // stopped first on Ctrl-C, before the database goes
async function withWorker(db, receiver, body) {
  const worker = (activeWorker = await startWorker(db, receiver));
  try {
    await warmUp(db, receiver);
    await db.checkpoint();
    return await body(worker);
  } finally {
    await worker.stop();
    activeWorker = null;
  }
}

// ---------------------------------------------------------------- scenarios

async function throughput(db, receiver) {
  const n = plan.events;
  await db.reset();
  return withWorker(db, receiver, async (worker) => {
    const pids = { bench: process.pid, worker: worker.proc.pid, receiver: receiver.pid };
    const wal0 = await db.walLsn();
    const cpu0 = cpuSnapshot(pids);
    const started = nowMs();
    await db.q(INSERT_MANY, [CLINIC_ID, MEMBER_ID, n]);
    const committed = nowMs();
    const done = await waitDelivered(db, receiver, n, 60_000 + 20 * n);
    const cpu = cpuSplit(cpu0, cpuSnapshot(pids));
    const wal = await db.walSince(wal0);
    const st = await receiver.call({ cmd: 'stats' });
    const seconds = (done - committed) / 1000;
    return {
      events: n,
      events_per_s: n / seconds,
      seconds,
      insert_ms: committed - started,
      commit_to_first_arrival_ms: st.firstAt - committed,
      requests: st.count,
      duplicates: st.count - st.distinct,
      wal_bytes_per_event: wal / n,
      cpu,
    };
  });
}

async function latency(db, receiver) {
  const n = Math.round(plan.latencySecs * plan.latencyRate);
  const period = 1000 / plan.latencyRate;
  await db.reset();
  return withWorker(db, receiver, async () => {
    const client = await db.client();
    const commits = new Map();
    const started = nowMs();
    try {
      for (let i = 0; i < n; i++) {
        // Absolute schedule: a late insert does not push the others back.
        const wait = started + i * period - nowMs();
        if (wait > 0) await sleep(wait);
        const { rows } = await client.query({ name: 'ins', text: INSERT_ONE_RETURNING, values: [CLINIC_ID, MEMBER_ID] });
        commits.set(`msg_visit_${rows[0].id}`, nowMs());
      }
    } finally {
      await client.end();
    }
    const sendSeconds = (nowMs() - started) / 1000;
    await waitDelivered(db, receiver, n, 60_000);
    const { arrivals } = await receiver.call({ cmd: 'arrivals' });
    const lat = [];
    let early = 0;
    for (const [id, t] of arrivals) {
      const c = commits.get(id);
      if (c === undefined) continue;
      if (t < c) early += 1;
      lat.push(Math.max(0, t - c));
    }
    lat.sort((a, b) => a - b);
    return {
      events: n,
      rate_per_s: n / sendSeconds,
      matched: lat.length,
      arrivals_before_ack: early,
      p50_ms: percentile(lat, 50),
      p99_ms: percentile(lat, 99),
      max_ms: lat[lat.length - 1],
    };
  });
}

// `txns` single-row INSERT transactions from `clients` connections, each
// with a named (prepared) statement, as an app would send them.
async function insertLoad(db, pids) {
  const clients = await Promise.all(Array.from({ length: plan.clients }, () => db.client()));
  try {
    await db.checkpoint();
    const wal0 = await db.walLsn();
    const cpu0 = cpuSnapshot(pids);
    const started = nowMs();
    await Promise.all(
      clients.map(async (c, i) => {
        const share = Math.floor(plan.txns / plan.clients) + (i < plan.txns % plan.clients ? 1 : 0);
        for (let k = 0; k < share; k++) {
          await c.query({ name: 'ins', text: INSERT_ONE, values: [CLINIC_ID, MEMBER_ID] });
        }
      }),
    );
    const seconds = (nowMs() - started) / 1000;
    const cpu = cpuSplit(cpu0, cpuSnapshot(pids));
    const wal = await db.walSince(wal0);
    return { txns: plan.txns, clients: plan.clients, seconds, txns_per_s: plan.txns / seconds, wal_bytes_per_txn: wal / plan.txns, cpu };
  } finally {
    await Promise.all(clients.map((c) => c.end().catch(() => {})));
  }
}

async function triggerCost(db, receiver) {
  await db.reset();
  await db.triggers(false);
  let baseline;
  try {
    baseline = await insertLoad(db, { bench: process.pid });
  } finally {
    await db.triggers(true);
  }
  await db.reset();
  const stopped = await insertLoad(db, { bench: process.pid });
  await db.reset();
  const running = await withWorker(db, receiver, async (worker) => {
    const load = await insertLoad(db, { bench: process.pid, worker: worker.proc.pid, receiver: receiver.pid });
    const lastInsert = nowMs();
    const during = (await receiver.call({ cmd: 'stats' })).count;
    const done = await waitDelivered(db, receiver, plan.txns, 60_000 + 10 * plan.txns);
    return { ...load, delivered_during_inserts: during, drain_s: (done - lastInsert) / 1000 };
  });
  return {
    baseline,
    worker_stopped: stopped,
    worker_running: running,
    ratio_stopped: stopped.txns_per_s / baseline.txns_per_s,
    ratio_running: running.txns_per_s / baseline.txns_per_s,
  };
}

// ---------------------------------------------------------------- report

// key → how to read it from one scenario result.
const MEASURES = {
  throughput: {
    throughput_events_per_s: (r) => r.events_per_s,
    throughput_insert_ms: (r) => r.insert_ms,
    throughput_commit_to_first_arrival_ms: (r) => r.commit_to_first_arrival_ms,
    throughput_wal_bytes_per_event: (r) => r.wal_bytes_per_event,
    throughput_machine_busy_pct: (r) => r.cpu.machine_busy_pct,
    throughput_worker_cpu_pct: (r) => r.cpu.worker_pct,
    throughput_receiver_cpu_pct: (r) => r.cpu.receiver_pct,
    throughput_duplicates: (r) => r.duplicates,
  },
  latency: {
    latency_p50_ms: (r) => r.p50_ms,
    latency_p99_ms: (r) => r.p99_ms,
    latency_rate_per_s: (r) => r.rate_per_s,
    latency_arrivals_before_ack: (r) => r.arrivals_before_ack,
  },
  trigger: {
    trigger_ratio: (r) => r.ratio_stopped,
    trigger_ratio_worker_running: (r) => r.ratio_running,
    trigger_baseline_txns_per_s: (r) => r.baseline.txns_per_s,
    trigger_stopped_txns_per_s: (r) => r.worker_stopped.txns_per_s,
    trigger_running_txns_per_s: (r) => r.worker_running.txns_per_s,
    trigger_baseline_wal_bytes_per_txn: (r) => r.baseline.wal_bytes_per_txn,
    trigger_stopped_wal_bytes_per_txn: (r) => r.worker_stopped.wal_bytes_per_txn,
    trigger_running_drain_s: (r) => r.worker_running.drain_s,
  },
};

const LABELS = {
  throughput_events_per_s: ['end to end: %N visits in one INSERT', 'events/s', 0],
  throughput_insert_ms: ['  the INSERT itself (trigger + commit)', 'ms', 0],
  throughput_commit_to_first_arrival_ms: ['  commit → first arrival', 'ms', 1],
  throughput_wal_bytes_per_event: ['  WAL per event, insert + delivery', 'B', 0],
  throughput_machine_busy_pct: ['  machine CPU busy during delivery', '%', 0],
  throughput_worker_cpu_pct: ['  … of which the worker process', '%', 0],
  throughput_receiver_cpu_pct: ['  … of which the receiver process', '%', 0],
  throughput_duplicates: ['  duplicate requests at the receiver', '', 0],
  latency_p50_ms: ['latency p50, 200/s single-row inserts', 'ms', 2],
  latency_p99_ms: ['latency p99', 'ms', 2],
  latency_rate_per_s: ['  achieved insert rate', '/s', 0],
  latency_arrivals_before_ack: ['  arrivals before the commit ack (0 ms)', '', 0],
  trigger_ratio: ['trigger cost, worker stopped', '×', 2],
  trigger_ratio_worker_running: ['trigger cost, worker delivering', '×', 2],
  trigger_baseline_txns_per_s: ['  inserts/s without trigger', '/s', 0],
  trigger_stopped_txns_per_s: ['  inserts/s with trigger, worker stopped', '/s', 0],
  trigger_running_txns_per_s: ['  inserts/s with trigger, worker delivering', '/s', 0],
  trigger_baseline_wal_bytes_per_txn: ['  WAL per insert without trigger', 'B', 0],
  trigger_stopped_wal_bytes_per_txn: ['  WAL per insert with trigger', 'B', 0],
  trigger_running_drain_s: ['  drain after the last insert (worker on)', 's', 1],
};

function summarise(samples) {
  const spread = {};
  for (const [scenario, runs] of Object.entries(samples)) {
    for (const [key, get] of Object.entries(MEASURES[scenario])) {
      const xs = runs.map(get).filter((x) => typeof x === 'number' && Number.isFinite(x));
      if (xs.length) spread[key] = { median: median(xs), min: Math.min(...xs), max: Math.max(...xs), samples: xs };
    }
  }
  return spread;
}

function table(spread) {
  const rows = [['measure', 'median', 'min – max']];
  for (const [key, [label, unit, digits]] of Object.entries(LABELS)) {
    const s = spread[key];
    if (!s) continue;
    const f = (x) => x.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });
    rows.push([label.replace('%N', plan.events.toLocaleString('en-US')), `${f(s.median)} ${unit}`.trim(), s.samples.length > 1 ? `${f(s.min)} – ${f(s.max)}` : '']);
  }
  const w = [0, 1, 2].map((i) => Math.max(...rows.map((r) => r[i].length)));
  return rows.map((r) => [r[0].padEnd(w[0]), r[1].padStart(w[1]), r[2]].join('  ').trimEnd()).join('\n');
}

// ---------------------------------------------------------------- main

let db;
let receiver;
let cleaning = null;
function cleanup() {
  cleaning ??= (async () => {
    await activeWorker?.stop(5_000).catch(() => {});
    await receiver?.stop(2_000).catch(() => {});
    if (db && !opt['keep-database']) {
      await db.drop().catch((e) => log(`could not drop ${db.name}: ${e.message}`));
    } else if (db) {
      log(`kept database ${db.name}`);
      await db.pool.end().catch(() => {});
      await db.admin.end().catch(() => {});
    }
  })();
  return cleaning;
}
for (const sig of ['SIGINT', 'SIGTERM']) {
  process.once(sig, async () => {
    log(`${sig}: cleaning up`);
    await cleanup();
    process.exit(130);
  });
}

const SCENARIOS = { throughput, latency, trigger: triggerCost };

try {
  const began = new Date();
  db = await BenchDb.create(opt['database-url']);
  log(`database ${db.name}; graphile-worker ${gwVersion}, node ${process.versions.node}; ${plan.trigger}-level trigger`);
  await db.setUp(plan.trigger);
  const server = (
    await db.q(`SELECT version() AS v, current_setting('fsync') AS fsync, current_setting('synchronous_commit') AS sc,
                       current_setting('shared_buffers') AS sb, current_setting('max_wal_size') AS mws`)
  ).rows[0];
  receiver = await startReceiver();

  const samples = {};
  for (let rep = 1; rep <= plan.repeat; rep++) {
    for (const name of plan.scenarios) {
      log(`${name}, repetition ${rep}/${plan.repeat}`);
      const r = await SCENARIOS[name](db, receiver);
      log(`${name}: ${JSON.stringify(r)}`);
      (samples[name] ??= []).push(r);
    }
  }

  const spread = summarise(samples);
  const medians = Object.fromEntries(Object.entries(spread).map(([k, s]) => [k, s.median]));
  const title = `graphile-worker ${gwVersion} (node ${process.versions.node}, ${plan.trigger}-level trigger)` +
    `${opt.quick ? ' — QUICK sizes, not comparable with full runs' : ''}; ${plan.repeat} repetition(s)`;
  console.log(`${title}\n\n${table(spread)}`);
  if (opt['json-out']) {
    const out = {
      peer: 'graphile-worker',
      version: gwVersion,
      node: process.versions.node,
      quick: opt.quick,
      started_at: began.toISOString(),
      finished_at: new Date().toISOString(),
      ...medians,
      spread,
      samples,
      plan,
      worker_settings: { ...workerSettings, secret: undefined },
      machine: { cpus: os.cpus().length, cpu_model: os.cpus()[0]?.model, mem_gib: os.totalmem() / 2 ** 30, kernel: os.release() },
      server: { version: server.v, fsync: server.fsync, synchronous_commit: server.sc, shared_buffers: server.sb, max_wal_size: server.mws },
    };
    writeFileSync(opt['json-out'], JSON.stringify(out, null, 2) + '\n');
    log(`wrote ${opt['json-out']}`);
  }
} catch (e) {
  log(`failed: ${e.stack ?? e}`);
  process.exitCode = 1;
} finally {
  await cleanup();
}
// A child's IPC channel or a stray pg socket must not hold the bench open.
process.exit();
