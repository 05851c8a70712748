// Sends a known StatsD load with hot-shots (the real npm client) and prints what it sent.
//   node send.js udp 127.0.0.1 8125      |   node send.js uds /path/to/socket
// Every metric has the tags route:/a, service:shop, env:test (DogStatsD unified tagging).
'use strict';
const StatsD = require('hot-shots');

const [protocol, a, b] = process.argv.slice(2);
const opts = protocol === 'uds'
  ? { protocol: 'uds', path: a }
  : { protocol: 'udp', host: a, port: Number(b) };

// Sampling decisions made known: with a rate of 0.5, every other call is sent.
let flip = 0;
Math.random = () => (flip++ % 2 === 0 ? 0.25 : 0.75);

const errors = [];
const client = new StatsD({
  ...opts,
  prefix: 'shop.',
  globalTags: { route: '/a', service: 'shop', env: 'test' },
  // Several lines per packet (newline separated), as in production.
  maxBufferSize: 1000,
  bufferFlushInterval: 50,
  errorHandler: (e) => errors.push(String(e)),
});

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function main() {
let lines = 0;
const N = 1000;
for (let i = 1; i <= N; i++) {
  // A Unix datagram socket's queue holds few packets (net.unix.max_dgram_qlen) and
  // unix-dgram reports `congestion` instead of waiting: pace the load (as any real service
  // is paced by its requests), so the test measures the agent, not the client's drops.
  if (i % (protocol === 'uds' ? 5 : 20) === 0) await sleep(protocol === 'uds' ? 10 : 1);
  client.increment('requests', 1); lines++;
  client.increment('sampled', 2, 0.5); if (i % 2 === 1) lines++;
  client.timing('latency', i); lines++;              // 1..1000 ms
  client.histogram('payload', i % 100 + 1); lines++; // 1..100, ten times each
  client.distribution('queue_wait', i / 4); lines++; // 0.25..250
  client.set('users', `u${i % 300}`); lines++;        // 300 distinct members
}
client.gauge('depth', 10); lines++;
client.gaugeDelta('depth', 5); lines++;
client.gaugeDelta('depth', -3); lines++;             // 10, 15, 12

client.close((e) => {
  if (e) errors.push(String(e));
  process.stdout.write(JSON.stringify({ lines, errors }) + '\n');
  process.exit(errors.length ? 1 : 0);
});
}

main();
