#!/usr/bin/env python3
"""Independent OPC UA server peer for Fieldline's tests (asyncua 2.1).

    python tests/peers/opcua_server.py --port PORT --spec SPEC.json
        [--cert-dir DIR] [--user NAME:PASSWORD]...

Serves opc.tcp://127.0.0.1:PORT/fieldline/ (PORT 0 picks a free port). Variables live
in namespace 2 (the spec's namespace URI, registered first) under Objects/<folder>,
with string NodeIds: ns=2;s=<name>.

Security: the None endpoint always; with --cert-dir also Basic256Sha256 and
Aes128_Sha256_RsaOaep in Sign and SignAndEncrypt. The server certificate is
DIR/server.der with its key DIR/server.pem, generated (self-signed, application
URI urn:fieldline:test-server, SAN localhost / 127.0.0.1) when missing, so a test
can trust DIR/server.der and a restarted server keeps its identity. Client
certificates are accepted (no validator). With --user, only user name tokens are
offered and only the given users (with their passwords) are accepted.

SPEC.json:

    {"folder": "Line",
     "variables": [
       {"name": "Temperature", "type": "Double", "value": 21.5,
        "source_timestamp": "2024-05-01T12:00:00.123456Z", "writable": true},
       {"name": "Count", "type": "UInt32", "value": 7},
       {"name": "Label", "type": "String", "value": "ok"}]}

Types: Boolean, Int16, UInt16, Int32, UInt32, Int64, UInt64, Float, Double, String.

Once listening it prints exactly one line `READY <port>` on stdout. SIGTERM/SIGINT
stop it (exit 0).

Commands on stdin, one per line (replies on stdout):

    set NAME VALUE [SOURCE_TIMESTAMP]   -> OK     (RFC 3339; now when absent)
    status NAME STATUS_NAME             -> OK     (e.g. BadSensorFailure; value kept)
    get NAME                            -> VALUE <value>   (as Python prints it)
    anything invalid                    -> ERR <reason>

Every value a client writes is also reported as `WRITTEN NAME VALUE`.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import ipaddress
import json
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Any

from asyncua import Server, ua
from asyncua.common.callback import CallbackType
from asyncua.crypto.cert_gen import (
    dump_private_key_as_pem,
    generate_private_key,
    generate_self_signed_app_certificate,
)
from asyncua.crypto.permission_rules import User, UserRole
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

NAMESPACE = "urn:fieldline:test"
APP_URI = "urn:fieldline:test-server"

TYPES = {
    "Boolean": ua.VariantType.Boolean,
    "Int16": ua.VariantType.Int16,
    "UInt16": ua.VariantType.UInt16,
    "Int32": ua.VariantType.Int32,
    "UInt32": ua.VariantType.UInt32,
    "Int64": ua.VariantType.Int64,
    "UInt64": ua.VariantType.UInt64,
    "Float": ua.VariantType.Float,
    "Double": ua.VariantType.Double,
    "String": ua.VariantType.String,
}


def parse_value(vtype: ua.VariantType, text: Any) -> Any:
    if vtype == ua.VariantType.Boolean:
        if isinstance(text, bool):
            return text
        lowered = str(text).lower()
        if lowered in ("1", "true", "on"):
            return True
        if lowered in ("0", "false", "off"):
            return False
        raise ValueError(f"{text!r} is not a boolean")
    if vtype in (ua.VariantType.Float, ua.VariantType.Double):
        return float(text)
    if vtype == ua.VariantType.String:
        return str(text)
    return int(text)


def parse_time(text: str | None) -> datetime.datetime:
    if not text:
        return datetime.datetime.now(datetime.timezone.utc)
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def ensure_certificate(folder: Path) -> tuple[Path, Path]:
    """The server certificate and key in `folder`, generated when missing."""
    cert_path = folder / "server.der"
    key_path = folder / "server.pem"
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    folder.mkdir(parents=True, exist_ok=True)
    key = generate_private_key()
    cert = generate_self_signed_app_certificate(
        key,
        "Fieldline test server",
        {"organizationName": "Fieldline tests"},
        [
            x509.UniformResourceIdentifier(APP_URI),
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ],
        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
    )
    key_path.write_bytes(dump_private_key_as_pem(key))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    return cert_path, key_path


class Users:
    """Accepts exactly the configured users."""

    def __init__(self, users: dict[str, str]) -> None:
        self.users = users

    def get_user(self, iserver: Any, username: str | None = None, password: str | None = None, certificate: Any = None) -> User | None:
        if username is not None and self.users.get(username) == password:
            return User(role=UserRole.User, name=username)
        return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Peer:
    def __init__(self, server: Server, nodes: dict[str, tuple[Any, ua.VariantType]]) -> None:
        self.server = server
        self.nodes = nodes

    def say(self, line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    async def command(self, line: str) -> str:
        parts = line.split()
        if not parts:
            return "ERR empty command"
        verb, args = parts[0], parts[1:]
        if verb == "set" and len(args) in (2, 3):
            node, vtype = self.node(args[0])
            value = parse_value(vtype, args[1])
            dv = ua.DataValue(
                ua.Variant(value, vtype),
                SourceTimestamp=parse_time(args[2] if len(args) == 3 else None),
                ServerTimestamp=datetime.datetime.now(datetime.timezone.utc),
            )
            await self.server.write_attribute_value(node.nodeid, dv)
            return "OK"
        if verb == "status" and len(args) == 2:
            node, vtype = self.node(args[0])
            code = getattr(ua.StatusCodes, args[1], None)
            if code is None:
                return f"ERR unknown status {args[1]}"
            current = await node.read_data_value()
            dv = ua.DataValue(
                current.Value,
                StatusCode=ua.StatusCode(code),
                SourceTimestamp=datetime.datetime.now(datetime.timezone.utc),
                ServerTimestamp=datetime.datetime.now(datetime.timezone.utc),
            )
            await self.server.write_attribute_value(node.nodeid, dv)
            return "OK"
        if verb == "get" and len(args) == 1:
            node, _ = self.node(args[0])
            return f"VALUE {await node.read_value()}"
        return f"ERR unknown command {line!r}"

    def node(self, name: str) -> tuple[Any, ua.VariantType]:
        if name not in self.nodes:
            raise KeyError(f"no variable {name}")
        return self.nodes[name]

    async def handle_line(self, line: str) -> None:
        try:
            reply = await self.command(line)
        except Exception as exc:  # every bad command gets an answer, never a crash
            reply = f"ERR {exc}"
        self.say(reply)


def stdin_reader(loop: asyncio.AbstractEventLoop, peer: Peer) -> None:
    for line in sys.stdin:
        line = line.strip()
        if line:
            asyncio.run_coroutine_threadsafe(peer.handle_line(line), loop)


async def run(args: argparse.Namespace) -> int:
    try:
        spec = json.loads(Path(args.spec).read_text())
    except (OSError, ValueError) as exc:
        print(f"opcua_server: bad spec {args.spec}: {exc!r}", file=sys.stderr)
        return 2
    users = dict(u.split(":", 1) for u in args.user)
    server = Server(user_manager=Users(users) if users else None)
    await server.init()
    port = args.port or free_port()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{port}/fieldline/")
    server.set_server_name("Fieldline test server")
    await server.set_application_uri(APP_URI)
    policies = [ua.SecurityPolicyType.NoSecurity]
    if args.cert_dir:
        cert, key = ensure_certificate(Path(args.cert_dir))
        await server.load_certificate(str(cert))
        await server.load_private_key(str(key))
        policies += [
            ua.SecurityPolicyType.Basic256Sha256_Sign,
            ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
            ua.SecurityPolicyType.Aes128Sha256RsaOaep_Sign,
            ua.SecurityPolicyType.Aes128Sha256RsaOaep_SignAndEncrypt,
        ]
    server.set_security_policy(policies)
    if users:
        server.set_identity_tokens([ua.UserNameIdentityToken])
    else:
        server.set_identity_tokens([ua.AnonymousIdentityToken, ua.UserNameIdentityToken])
    idx = await server.register_namespace(spec.get("namespace", NAMESPACE))
    folder = await server.nodes.objects.add_folder(ua.NodeId(spec.get("folder", "Line"), idx), spec.get("folder", "Line"))
    nodes: dict[str, tuple[Any, ua.VariantType]] = {}
    for v in spec.get("variables", []):
        vtype = TYPES[v.get("type", "Double")]
        node = await folder.add_variable(
            ua.NodeId(v["name"], idx),
            v["name"],
            ua.Variant(parse_value(vtype, v.get("value", 0)), vtype),
        )
        if v.get("writable"):
            await node.set_writable()
        nodes[v["name"]] = (node, vtype)
        if "source_timestamp" in v:
            await server.write_attribute_value(
                node.nodeid,
                ua.DataValue(
                    ua.Variant(parse_value(vtype, v.get("value", 0)), vtype),
                    SourceTimestamp=parse_time(v["source_timestamp"]),
                    ServerTimestamp=datetime.datetime.now(datetime.timezone.utc),
                ),
            )
    peer = Peer(server, nodes)

    try:
        await server.start()
    except OSError as exc:
        print(f"opcua_server: cannot listen on 127.0.0.1:{port}: {exc}", file=sys.stderr)
        return 1

    # Client writes that the server took are reported so tests see what reached it.
    def on_write(event: Any, dispatcher: Any) -> None:
        results = list(event.response_params or [])
        for i, wv in enumerate(getattr(event.request_params, "NodesToWrite", [])):
            if i >= len(results) or not results[i].is_good():
                continue
            for name, (node, _) in nodes.items():
                if wv.NodeId == node.nodeid:
                    peer.say(f"WRITTEN {name} {wv.Value.Value.Value}")

    server.subscribe_server_callback(CallbackType.PostWrite, on_write)

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    threading.Thread(target=stdin_reader, args=(loop, peer), daemon=True).start()
    peer.say(f"READY {port}")
    await stop.wait()
    await server.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--spec", required=True)
    parser.add_argument("--cert-dir")
    parser.add_argument("--user", action="append", default=[], help="NAME:PASSWORD")
    args = parser.parse_args(argv)
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
