#!/usr/bin/env python3
"""A Python MES client for Fieldline's PlantService, with no .proto file.

It learns the API from the server itself (gRPC server reflection), builds the message
classes at run time and calls the service: read the latest values, subscribe to changes,
query history, list and acknowledge alarms, and write a tag through the safe write path.

    pip install grpcio grpcio-reflection
    python3 mes_client.py --server 127.0.0.1:50053 read
    python3 mes_client.py subscribe --count 5
    python3 mes_client.py history demo/tank/temperature --minutes 10 --window 60
    python3 mes_client.py alarms
    python3 mes_client.py acknowledge demo/tank/temp-high --comment "checked on site"
    python3 mes_client.py write demo/tank/setpoint 45.5

Every command prints one JSON document per line. Exit codes: 0 done, 1 the server refused
(the gRPC status and its message are printed), 2 wrong arguments.
"""

import argparse
import json
import sys
import time
import uuid

import grpc
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

SERVICE = "fieldline.v1.PlantService"


class PlantClient:
    """PlantService, with its methods and messages taken from server reflection."""

    def __init__(self, address):
        self.channel = grpc.insecure_channel(address)
        self.pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(self.channel))
        self.service = self.pool.FindServiceByName(SERVICE)

    def message(self, name, **fields):
        """A message of the API by its short name, e.g. message("TagFilter", line="demo")."""
        cls = message_factory.GetMessageClass(self.pool.FindMessageTypeByName(f"fieldline.v1.{name}"))
        return json_format.ParseDict(fields, cls())

    def call(self, method, request, timeout=10):
        """Calls `method`; a server-streaming one returns an iterator of responses."""
        m = self.service.FindMethodByName(method)
        response = message_factory.GetMessageClass(m.output_type)
        path = f"/{SERVICE}/{method}"
        kind = self.channel.unary_stream if m.server_streaming else self.channel.unary_unary
        stub = kind(path, request_serializer=type(request).SerializeToString,
                    response_deserializer=response.FromString)
        return stub(request, timeout=None if m.server_streaming else timeout)


def as_dict(message):
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def split_path(path):
    parts = path.split("/")
    if len(parts) != 3:
        raise SystemExit(f"{path!r} is not line/device/tag")
    return parts


def value_of(text):
    """A command value from the command line: true/false, an integer or a number."""
    if text in ("true", "false"):
        return {"bool_value": text == "true"}
    try:
        return {"int_value": str(int(text))}
    except ValueError:
        return {"double_value": float(text)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", default="127.0.0.1:50053", help="PlantService host:port")
    sub = parser.add_subparsers(dest="command", required=True)
    read = sub.add_parser("read", help="the latest value of every tag (or of one device)")
    read.add_argument("--line", default="")
    read.add_argument("--device", default="")
    subscribe = sub.add_parser("subscribe", help="values as they change")
    subscribe.add_argument("--count", type=int, default=10, help="stop after this many")
    history = sub.add_parser("history", help="stored values of one tag")
    history.add_argument("tag", help="line/device/tag")
    history.add_argument("--minutes", type=float, default=10)
    history.add_argument("--window", type=float, default=0, help="seconds per mean; 0: raw")
    sub.add_parser("alarms", help="every alarm with its state")
    ack = sub.add_parser("acknowledge", help="acknowledge an alarm")
    ack.add_argument("alarm_id")
    ack.add_argument("--comment", default="")
    write = sub.add_parser("write", help="write a tag through the safe write path")
    write.add_argument("tag", help="line/device/tag")
    write.add_argument("value")
    args = parser.parse_args()

    client = PlantClient(args.server)
    try:
        if args.command == "read":
            answer = client.call("ReadLatest", client.message("TagFilter", line=args.line, device=args.device))
            for s in answer.samples:
                print(json.dumps(as_dict(s)))
        elif args.command == "subscribe":
            stream = client.call("Subscribe", client.message("TagFilter"))
            for n, s in enumerate(stream, 1):
                print(json.dumps(as_dict(s)), flush=True)
                if n >= args.count:
                    stream.cancel()
                    break
        elif args.command == "history":
            line, device, tag = split_path(args.tag)
            end = time.time_ns()
            request = client.message(
                "HistoryRequest", line=line, device=device, tag=tag,
                start_ns=str(end - int(args.minutes * 60e9)), end_ns=str(end),
                aggregate="AGGREGATE_MEAN" if args.window else "AGGREGATE_UNSPECIFIED",
                window_ns=str(int(args.window * 1e9)))
            for p in client.call("QueryHistory", request).points:
                print(json.dumps(as_dict(p)))
        elif args.command == "alarms":
            for a in client.call("ListAlarms", client.message("AlarmFilter")).alarms:
                print(json.dumps(as_dict(a)))
        elif args.command == "acknowledge":
            action = client.message("AlarmAction", alarm_id=args.alarm_id, user="mes-example",
                                    comment=args.comment)
            print(json.dumps(as_dict(client.call("Acknowledge", action))))
        elif args.command == "write":
            command = client.message(
                "Command", id=str(uuid.uuid4()), tag=args.tag, value=value_of(args.value),
                deadline_ns=str(time.time_ns() + 10 * 10**9), requested_by="mes-example",
                reason="set from the MES example client")
            print(json.dumps(as_dict(client.call("Write", command))))
    except grpc.RpcError as e:
        print(json.dumps({"status": e.code().name, "message": e.details()}))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
