"""An OPC UA-to-MQTT collector of the kind tutorials teach: asyncua subscribes to every node,
and its data-change handler publishes each notification as JSON with paho-mqtt at QoS 1.

Used by `fieldline-bench opcua` as the reference the adapter is compared with. Prints
`POINTS <total>` once a second (notifications handled since start) and runs until terminated.
"""

import argparse
import asyncio
import json
import signal
import sys
import time

import paho.mqtt.client as mqtt
from asyncua import Client


class Handler:
    def __init__(self, broker):
        self.broker = broker
        self.points = 0

    def datachange_notification(self, node, val, data):
        source = data.monitored_item.Value.SourceTimestamp
        payload = {
            "node": node.nodeid.to_string(),
            "value": val,
            "ts": source.timestamp() if source else time.time(),
        }
        self.broker.publish(f"bench/python/{payload['node']}", json.dumps(payload), qos=1)
        self.points += 1


async def run(args) -> int:
    host, port = args.mqtt.rsplit(":", 1)
    broker = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="python-opcua-collector")
    broker.max_queued_messages_set(0)
    broker.connect(host, int(port))
    broker.loop_start()
    handler = Handler(broker)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    async with Client(url=args.endpoint, timeout=30) as client:
        nodes = [client.get_node(f"ns=1;s=v{i}") for i in range(args.items)]
        # One subscription per `per_subscription` items, created in calls of at most 1000.
        for start in range(0, len(nodes), args.per_subscription):
            sub = await client.create_subscription(args.publishing_ms, handler)
            chunk = nodes[start : start + args.per_subscription]
            for i in range(0, len(chunk), 1000):
                await sub.subscribe_data_change(chunk[i : i + 1000], sampling_interval=args.sampling_ms)
        print("STARTED", flush=True)
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=1.0)
            except asyncio.TimeoutError:
                pass
            print(f"POINTS {handler.points}", flush=True)
    broker.loop_stop()
    return 0


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--endpoint", required=True)
    p.add_argument("--items", type=int, required=True)
    p.add_argument("--per-subscription", type=int, default=5000)
    p.add_argument("--publishing-ms", type=float, default=500)
    p.add_argument("--sampling-ms", type=float, default=250)
    p.add_argument("--mqtt", default="127.0.0.1:1883")
    return asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
