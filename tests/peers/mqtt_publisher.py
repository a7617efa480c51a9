"""A third-party MQTT publisher (paho-mqtt) for tests of Fieldline's MQTT ingest.

Connects to the broker given by --host/--port, prints "READY" once connected, then reads
one JSON object per line on stdin: {"topic": "...", "hex": "<payload bytes in hex>",
"qos": 1}. Each message is published and, once the broker has acknowledged it, "PUBLISHED"
is printed. Payloads are hex so tests can send bytes that are not UTF-8.
"""

import argparse
import json
import sys

import paho.mqtt.client as mqtt


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    args = parser.parse_args()

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.connect(args.host, args.port, keepalive=30)
    client.loop_start()
    print("READY", flush=True)
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        request = json.loads(line)
        info = client.publish(
            request["topic"], bytes.fromhex(request["hex"]), qos=request.get("qos", 1)
        )
        info.wait_for_publish(timeout=10)
        print("PUBLISHED" if info.is_published() else "FAILED", flush=True)
    client.loop_stop()
    client.disconnect()


if __name__ == "__main__":
    main()
