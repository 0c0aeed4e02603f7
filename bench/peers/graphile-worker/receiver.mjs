// The webhook receiver of the peer bench: a plain `node:http` server on
// 127.0.0.1 that answers 200 to every POST and remembers when each
// `webhook-id` arrived. It runs as a child process of bench.mjs so that it
// does not share an event loop (and a core's worth of scheduling) with the
// graphile-worker process or the load generator.
//
// Times are `process.hrtime` (CLOCK_MONOTONIC), which is the same clock in
// every process on the machine, so bench.mjs can subtract its commit times
// from these arrival times directly.
//
// IPC protocol (parent → child):
//   {cmd: 'reset'}               forget every arrival; reply {ok}
//   {cmd: 'wait', n, id}         reply {id, count, t} as soon as `n` requests have arrived
//   {cmd: 'stats', id}           reply {id, count, distinct, firstAt, lastAt}
//   {cmd: 'arrivals', id}        reply {id, arrivals: [[webhookId, t], ...]} (first arrival per id)
//   {cmd: 'stop'}                exit
// The child sends {ready, port} once it listens.
import http from 'node:http';

const nowMs = () => Number(process.hrtime.bigint()) / 1e6;

let count = 0; // every request, duplicates included
let firstArrival = new Map(); // webhook-id → ms of its first arrival
let firstAt = null;
let lastAt = null;
let waiters = []; // {n, id}

function settleWaiters(t) {
  if (waiters.length === 0) return;
  const still = [];
  for (const w of waiters) {
    if (count >= w.n) process.send({ id: w.id, count, t });
    else still.push(w);
  }
  waiters = still;
}

const server = http.createServer((req, res) => {
  // Drain the body: an unread body would stall the keep-alive connection.
  req.on('data', () => {});
  req.on('end', () => {
    const t = nowMs();
    count += 1;
    if (firstAt === null) firstAt = t;
    lastAt = t;
    const id = req.headers['webhook-id'];
    if (id !== undefined && !firstArrival.has(id)) firstArrival.set(id, t);
    res.writeHead(200, { 'content-length': '0' });
    res.end();
    settleWaiters(t);
  });
});
// The worker's keep-alive connections must outlive the pauses between runs
// of a scenario (warm-up → CHECKPOINT → measurement).
server.keepAliveTimeout = 60_000;
server.headersTimeout = 65_000;

process.on('message', (msg) => {
  switch (msg.cmd) {
    case 'reset':
      count = 0;
      firstArrival = new Map();
      firstAt = lastAt = null;
      waiters = [];
      process.send({ id: msg.id, ok: true });
      break;
    case 'wait':
      waiters.push({ n: msg.n, id: msg.id });
      settleWaiters(nowMs());
      break;
    case 'stats':
      process.send({ id: msg.id, count, distinct: firstArrival.size, firstAt, lastAt });
      break;
    case 'arrivals':
      process.send({ id: msg.id, arrivals: [...firstArrival.entries()] });
      break;
    case 'stop':
      server.close();
      process.exit(0);
      break;
    default:
      process.send({ id: msg.id, error: `unknown command ${msg.cmd}` });
  }
});
// The bench owns this process: go when it goes.
process.on('disconnect', () => process.exit(0));

server.listen(0, '127.0.0.1', () => {
  process.send({ ready: true, port: server.address().port });
});
