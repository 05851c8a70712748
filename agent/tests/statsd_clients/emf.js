// Sends a known EMF load with aws-embedded-metrics (the real npm client) in Agent mode over
// the endpoint in AWS_EMF_AGENT_ENDPOINT; prints what it sent.
'use strict';
process.env.AWS_EMF_ENVIRONMENT = 'Agent';
const { createMetricsLogger, Unit } = require('aws-embedded-metrics');

async function main() {
  const N = 200;
  let records = 0;
  for (let i = 1; i <= N; i++) {
    const m = createMetricsLogger();
    m.setNamespace('Tally');
    m.setDimensions({ route: '/a', ServiceName: 'shop', Environment: 'test' });
    m.putMetric('emf_latency', i, Unit.Milliseconds); // 1..200 ms
    m.putMetric('emf_orders', 2, Unit.Count);
    m.putMetric('emf_size', i * 10, Unit.Bytes);
    m.setProperty('requestId', `r${i}`); // a property, not a metric: not published
    await m.flush();
    records++;
  }
  // Clamped: another namespace (published in the agent's), a second dimension set (left out).
  const other = createMetricsLogger();
  other.setNamespace('SomeoneElses');
  other.setDimensions([
    { route: '/a', ServiceName: 'shop', Environment: 'test' },
    { route: '/a', extra: 'x', ServiceName: 'shop', Environment: 'test' },
  ]);
  other.putMetric('emf_orders', 5, Unit.Count);
  await other.flush();
  records++;
  process.stdout.write(JSON.stringify({ records }) + '\n');
}

main().catch((e) => { console.error(e); process.exit(1); });
