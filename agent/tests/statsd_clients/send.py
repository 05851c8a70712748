"""Sends a known StatsD load with DogStatsd (the real PyPI `datadog` client) and prints it.

    python send.py udp 127.0.0.1 8125   |   python send.py uds /path/to/socket

Every metric has the tags route:/a, service:shop, env:test.
"""
import itertools
import json
import sys
import time

import datadog.dogstatsd.base as base
from datadog.dogstatsd import DogStatsd

# Sampling decisions made known: with a rate of 0.25, one call in four is sent.
_draws = itertools.cycle([0.1, 0.9, 0.9, 0.9])
base.random = lambda: next(_draws)

protocol = sys.argv[1]
if protocol == "uds":
    client = DogStatsd(socket_path=sys.argv[2], disable_telemetry=True, disable_buffering=False)
else:
    client = DogStatsd(host=sys.argv[2], port=int(sys.argv[3]), disable_telemetry=True,
                       disable_buffering=False)
client.constant_tags = ["route:/a", "service:shop", "env:test"]

lines = 0
N = 1000
for i in range(1, N + 1):
    if i % (5 if protocol == "uds" else 20) == 0:
        # Paced like a real service (see send.js); DogStatsd drops silently on a full
        # Unix datagram queue, so the test keeps below it.
        client.flush()
        time.sleep(0.01 if protocol == "uds" else 0.001)
    client.increment("requests", 1); lines += 1            # the same series as hot-shots'
    client.increment("py_sampled", 3, sample_rate=0.25)
    if i % 4 == 1:
        lines += 1
    client.timing("py_latency", i * 2); lines += 1          # 2..2000 ms
    client.histogram("py_payload", i % 50 + 1); lines += 1  # 1..50, twenty times each
    client.distribution("py_queue_wait", i / 8); lines += 1  # 0.125..125
    client.set("py_users", "v%d" % (i % 123)); lines += 1    # 123 distinct members
client.gauge("py_depth", 4); lines += 1
client.gauge("py_depth", 9); lines += 1
client.gauge("py_depth", 7); lines += 1
client.service_check("py.check", 0)
client.event("deployed", "version 2")
client.flush()
client.close_socket()
print(json.dumps({"lines": lines, "events": 1, "service_checks": 1}))
