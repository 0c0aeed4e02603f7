// The graphile-worker process of the peer bench: what a team would deploy
// next to its app to turn `deliver` jobs (enqueued by a trigger on
// clinic.visits) into signed webhook POSTs. bench.mjs starts one per run as
// a child process, as production would run it, so that the worker has a
// Node event loop of its own.
//
// Settings come as one JSON argument (see `workerSettings` in bench.mjs).
// The child sends {ready: true} once graphile-worker LISTENs (after that no
// job can be missed), and stops gracefully on {cmd: 'stop'} or SIGTERM.
import { createHmac } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { Logger, run } from 'graphile-worker';
import { Pool } from 'undici';

const settings = JSON.parse(process.argv[2]);

// Standard Webhooks: the secret is `whsec_` + base64 of the key bytes, and
// the signature is HMAC-SHA256 over `${id}.${timestamp}.${body}`.
const key = Buffer.from(settings.secret.replace(/^whsec_/, ''), 'base64');

// One keep-alive pool to the one endpoint, wide enough that every job slot
// can have a request in flight (the product's bench endpoint allows 256).
const target = new URL(settings.receiverUrl);
const http = new Pool(target.origin, {
  connections: settings.httpConnections,
  pipelining: 1,
  keepAliveTimeout: 60_000,
});

const taskList = {
  async deliver(payload, helpers) {
    // The visit id names the message, so a retry carries the same
    // webhook-id (receivers de-duplicate on it) and the bench can match
    // arrivals to commits without asking the database.
    const id = `msg_visit_${payload.id}`;
    const timestamp = Math.floor(Date.now() / 1000).toString();
    const body = JSON.stringify({
      type: 'visit.created',
      timestamp: new Date().toISOString(),
      data: payload,
    });
    const signature = createHmac('sha256', key).update(`${id}.${timestamp}.${body}`).digest('base64');
    const res = await http.request({
      path: target.pathname,
      method: 'POST',
      headers: {
        'content-type': 'application/json',
        'webhook-id': id,
        'webhook-timestamp': timestamp,
        'webhook-signature': `v1,${signature}`,
      },
      body,
      headersTimeout: 30_000,
      bodyTimeout: 30_000,
    });
    await res.body.dump();
    if (res.statusCode < 200 || res.statusCode >= 300) {
      // Throwing is how graphile-worker learns to retry (with backoff).
      throw new Error(`receiver answered ${res.statusCode} for ${id} (job ${helpers.job.id})`);
    }
  },
};

// graphile-worker logs every completed job at INFO by default; at thousands
// of jobs per second that is a measurable share of the worker's CPU, and a
// team running at this rate would turn it down. Warnings and errors stay.
const logger = new Logger(() => (level, message) => {
  if (level === 'error' || level === 'warning') console.error(`[graphile-worker ${level}] ${message}`);
});

const events = new EventEmitter();
events.once('pool:listen:success', () => process.send?.({ ready: true }));

const runner = await run({
  connectionString: settings.connectionString,
  taskList,
  logger,
  events,
  noHandleSignals: true,
  concurrency: settings.concurrency,
  maxPoolSize: settings.maxPoolSize,
  pollInterval: settings.pollInterval,
  // No crontab: the default would look for ./crontab.
  crontab: '',
  preset: {
    worker: {
      ...(settings.localQueueSize > 1 ? { localQueue: { size: settings.localQueueSize } } : {}),
      completeJobBatchDelay: settings.completeJobBatchDelay,
      failJobBatchDelay: settings.failJobBatchDelay,
    },
  },
});

let stopping = false;
async function stop() {
  if (stopping) return;
  stopping = true;
  try {
    await runner.stop();
  } finally {
    await http.close().catch(() => {});
    process.exit(0);
  }
}
process.on('message', (msg) => {
  if (msg?.cmd === 'stop') stop();
});
process.on('SIGTERM', stop);
process.on('disconnect', stop);
await runner.promise;
