"""Sends a known EMF load with aws-embedded-metrics (the real PyPI client) in Agent mode over
the endpoint in AWS_EMF_AGENT_ENDPOINT; prints what it sent."""
import asyncio
import json
import os

os.environ["AWS_EMF_ENVIRONMENT"] = "Agent"

from aws_embedded_metrics.logger.metrics_logger_factory import create_metrics_logger  # noqa: E402


async def main():
    n = 150
    for i in range(1, n + 1):
        m = create_metrics_logger()
        m.set_namespace("Tally")
        m.set_dimensions({"route": "/a", "ServiceName": "shop", "Environment": "test"})
        m.put_metric("py_emf_latency", i * 2, "Milliseconds")  # 2..300 ms
        m.put_metric("emf_orders", 3, "Count")  # the same series as the Node client's
        await m.flush()
    print(json.dumps({"records": n}))


asyncio.run(main())
