"""A Modbus-to-MQTT collector of the kind tutorials teach: pymodbus' synchronous client polls
each device in turn, every register becomes a JSON field, paho-mqtt publishes at QoS 1.

Used by `fieldline-bench modbus` as the reference the adapter is compared with. Prints
`POINTS <total>` once a second (points read since start) and runs until terminated.
"""

import argparse
import json
import signal
import sys
import time

import paho.mqtt.client as mqtt
from pymodbus.client import ModbusTcpClient


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--devices", required=True, help="comma-separated host:port list")
    p.add_argument("--registers", type=int, required=True)
    p.add_argument("--interval", type=float, required=True, help="seconds between cycles")
    p.add_argument("--mqtt", default="127.0.0.1:1883")
    args = p.parse_args()

    running = True

    def stop(*_):
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, stop)
    host, port = args.mqtt.rsplit(":", 1)
    broker = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="python-collector")
    broker.connect(host, int(port))
    broker.loop_start()
    clients = []
    for i, addr in enumerate(args.devices.split(",")):
        h, pt = addr.rsplit(":", 1)
        c = ModbusTcpClient(h, port=int(pt))
        c.connect()
        clients.append((f"d{i}", c))
    points = 0
    last_report = time.monotonic()
    while running:
        started = time.monotonic()
        for name, client in clients:
            rr = client.read_holding_registers(0, count=args.registers, device_id=1)
            if rr.isError():
                continue
            payload = {"device": name, "ts": time.time(), "values": {f"r{i}": v for i, v in enumerate(rr.registers)}}
            broker.publish(f"bench/python/{name}", json.dumps(payload), qos=1)
            points += len(rr.registers)
        now = time.monotonic()
        if now - last_report >= 1.0:
            print(f"POINTS {points}", flush=True)
            last_report = now
        time.sleep(max(0.0, args.interval - (now - started)))
    print(f"POINTS {points}", flush=True)
    broker.loop_stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
