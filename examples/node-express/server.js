// An Express service that reports what tally-tower reports for a Rust service, over StatsD to
// the tally agent's receiver (the sidecar in the same ECS task), with hot-shots.
//
//   STATSD_HOST=127.0.0.1 STATSD_PORT=8125 PORT=3000 SERVICE_NAME=checkout ENVIRONMENT=production node server.js
//
// Per request, once, when the response finished or the client went away:
//   RequestCount      counter  every request
//   ErrorCount        counter  5xx, and requests whose handler threw (Express answers 500)
//   ClientErrorCount  counter  4xx, and clients that left before the response
//   ResponseTime      timer    milliseconds, from arrival until the response was sent or abandoned
// tagged Route (the route template, /orders/{id}; __unmatched__ when no route matched),
// Method (the nine standard methods, else __other__) and StatusClass (2xx .. 5xx): the names
// of tally-tower and tally::conventions, so one agent publishes both services alike and its
// ErrorRate rollup, alarms and dashboard cover this one too. `service:`/`env:` tags carry
// SERVICE_NAME/ENVIRONMENT (the agent's own service/environment win when it has them).
//
// Unlike the playbook's MetricsCollector (one PutMetricData call per sample, awaited in the
// request path, a metric name per route and per status code), recording is a UDP datagram
// buffered by hot-shots: it never blocks a request, costs no AWS call, and the route is a
// bounded tag, not part of the name. Errors of the client (a full socket buffer, DNS) go to
// errorHandler and are counted and logged, never thrown into a request.
//
// On start it prints one JSON line, {"listening":<port>} (PORT=0 picks a free port). On SIGTERM
// or SIGINT it stops accepting, lets requests in flight finish, flushes hot-shots and exits 0.
'use strict';

const express = require('express');
const StatsD = require('hot-shots');

const env = (name, fallback) => (process.env[name] === undefined || process.env[name] === '' ? fallback : process.env[name]);

function port(name, fallback) {
  const raw = env(name, String(fallback));
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 0 || n > 65535) {
    console.error(`${name}=${raw} is not a port: set it to a number from 0 to 65535`);
    process.exit(2);
  }
  return n;
}

const statsdHost = env('STATSD_HOST', '127.0.0.1');
const statsdPort = port('STATSD_PORT', 8125);
const httpPort = port('PORT', 3000);

let statsdErrors = 0;
let lastLogged = 0;
const statsd = new StatsD({
  host: statsdHost,
  port: statsdPort,
  protocol: 'udp',
  globalTags: {
    service: env('SERVICE_NAME', 'node-web'),
    env: env('ENVIRONMENT', 'development'),
  },
  // Several lines per datagram, below a 1500-byte MTU; sent at least every second.
  maxBufferSize: 1400,
  bufferFlushInterval: 1000,
  // Never throw into the request path: count, and log at most once every 10 s.
  errorHandler: (err) => {
    statsdErrors += 1;
    const now = Date.now();
    if (now - lastLogged >= 10_000) {
      lastLogged = now;
      console.error(`statsd: ${err && err.message ? err.message : err} (${statsdErrors} errors so far)`);
    }
  },
});

const METHODS = new Set(['GET', 'POST', 'PUT', 'DELETE', 'PATCH', 'HEAD', 'OPTIONS', 'CONNECT', 'TRACE']);

// Express writes parameters as `:id`; hot-shots would turn the `:` of a tag value into `_`.
// The template is written the way tally-tower writes it (`/orders/{id}`, `/files/{*path}`).
function routeTemplate(req) {
  if (!req.route || typeof req.route.path !== 'string') return '__unmatched__';
  const path = `${req.baseUrl || ''}${req.route.path}`;
  return path.replace(/:(\w+)/g, '{$1}').replace(/\*(\w+)/g, '{*$1}') || '/';
}

function statusClass(status) {
  if (status >= 100 && status < 600) return `${Math.floor(status / 100)}xx`;
  return '5xx';
}

// The recording middleware: first, so it sees every request, matched or not.
function tally(req, res, next) {
  const start = process.hrtime.bigint();
  let done = false;
  const record = (finished) => {
    if (done) return;
    done = true;
    // A client that went away before the response counts as a client error (nginx's 499).
    const cls = finished ? statusClass(res.statusCode) : '4xx';
    const tags = {
      Route: routeTemplate(req),
      Method: METHODS.has(req.method) ? req.method : '__other__',
      StatusClass: cls,
    };
    const ms = Number(process.hrtime.bigint() - start) / 1e6;
    statsd.increment('RequestCount', 1, tags);
    statsd.timing('ResponseTime', ms, tags);
    if (cls === '5xx') statsd.increment('ErrorCount', 1, tags);
    else if (cls === '4xx') statsd.increment('ClientErrorCount', 1, tags);
  };
  res.on('finish', () => record(true));
  res.on('close', () => record(res.writableFinished));
  next();
}

const app = express();
app.disable('x-powered-by');
app.use(tally);
app.use(express.json({ limit: '16kb' }));

// A small order store, so the example has a found, a not-found and a failing path.
const orders = new Map([['1', { id: '1', item: 'book', quantity: 1 }]]);
let nextId = 2;

app.get('/health', (req, res) => res.json({ ok: true }));

app.get('/orders/:id', (req, res) => {
  const order = orders.get(req.params.id);
  if (!order) return res.status(404).json({ error: `no order ${req.params.id}` });
  return res.json(order);
});

app.post('/orders', (req, res) => {
  const { item, quantity } = req.body || {};
  if (typeof item !== 'string' || item === '' || !Number.isInteger(quantity) || quantity < 1) {
    return res.status(400).json({ error: 'send {"item": "<name>", "quantity": <integer >= 1>}' });
  }
  const id = String(nextId++);
  const order = { id, item, quantity };
  orders.set(id, order);
  return res.status(201).json(order);
});

// A dependency that is down: the handler throws, Express answers 500, ErrorCount moves.
app.get('/payments/:id', () => {
  throw new Error('the payment provider is unreachable');
});

app.use((req, res) => res.status(404).json({ error: 'no such route' }));
// eslint-disable-next-line no-unused-vars
app.use((err, req, res, next) => {
  res.status(err.status && err.status >= 400 && err.status < 600 ? err.status : 500).json({ error: 'internal error' });
});

const server = app.listen(httpPort, () => {
  process.stdout.write(`${JSON.stringify({ listening: server.address().port })}\n`);
});
server.on('error', (err) => {
  console.error(`cannot listen on port ${httpPort}: ${err.message}: set PORT to a free port`);
  process.exit(1);
});

let stopping = false;
function stop(signal) {
  if (stopping) return;
  stopping = true;
  console.error(`${signal}: closing the HTTP server, then flushing StatsD`);
  // At most 10 s for requests in flight (ECS's stopTimeout is 30 s).
  const force = setTimeout(() => server.closeAllConnections(), 10_000);
  force.unref();
  server.close(() => {
    statsd.close((err) => {
      if (err) console.error(`statsd: final flush failed: ${err.message}`);
      process.exit(0);
    });
  });
  server.closeIdleConnections();
}
process.on('SIGTERM', () => stop('SIGTERM'));
process.on('SIGINT', () => stop('SIGINT'));
