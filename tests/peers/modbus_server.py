#!/usr/bin/env python3
"""Independent Modbus peer for Fieldline's end-to-end tests (pymodbus 3.16).

    python tests/peers/modbus_server.py --port PORT --spec SPEC.json [--unit 1]
    python tests/peers/modbus_server.py --serial /dev/pts/N --spec SPEC.json   # RTU

Serves one Modbus device on 127.0.0.1:PORT (Modbus TCP), or Modbus RTU on a
serial device (e.g. one end of a `socat` pty pair). Four tables, each with
addresses 0..999, all 0 at start and writable by Modbus clients (FC 5, 6, 15,
16, 23): coils, discrete inputs, holding registers, input registers.

SPEC.json (every key optional; "type" defaults to uint16, "word_order" to big):

    {"coils":    [{"address": 0, "value": true}],
     "discrete": [{"address": 0, "value": true}],
     "holding":  [{"address": 0, "type": "float32", "value": 12.5, "word_order": "big"},
                  {"address": 2, "type": "float32", "value": -3.75, "word_order": "little"},
                  {"address": 4, "type": "int16", "value": -1234}],
     "input":    [{"address": 0, "type": "uint32", "value": 70000}]}

Types: uint16, int16, uint32, int32, uint64, int64, float32, float64; "value" may
also be a list of such values (consecutive). Register values are encoded with
pymodbus' own ModbusClientMixin.convert_to_registers, so the encoding does not
depend on the code under test. Bytes in a register are big-endian; word order
"big" = high word first at the lower address (ABCD), "little" = low word first
(CDAB).

Once listening it prints exactly one line `READY <port>` (the bound port, so
--port 0 picks a free one; `READY <device>` for --serial) on stdout.
SIGTERM/SIGINT stop it cleanly (exit 0).

Commands on stdin, one per line (replies on stdout; stdin closing is fine):

    set holding 4 int16 -99            -> OK
    set holding 0 float32 1.5 little   -> OK
    set input 0 uint16 5               -> OK
    set coil 0 1                       -> OK       (1/0/true/false/on/off)
    set discrete 0 0                   -> OK
    get holding 4 1                    -> VALUE 65437       (raw registers)
    get holding 0 2                    -> VALUE 16712,0     (comma-separated)
    get holding 0 float32 [big|little] -> VALUE 12.5        (decoded)
    get coil 0 [COUNT]                 -> VALUE 1  /  VALUE 1,0,1
    anything invalid                   -> ERR <reason>

Tables may also be written coils/discrete_inputs/di/holding_registers/hr/
input_registers/ir.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

from pymodbus.client.mixin import ModbusClientMixin
from pymodbus.constants import ExcCodes
from pymodbus.exceptions import NoSuchIdException
from pymodbus.logging import pymodbus_apply_logging_config
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

TABLE_SIZE = 1000

DT = ModbusClientMixin.DATATYPE
TYPES: dict[str, Any] = {
    "uint16": DT.UINT16,
    "int16": DT.INT16,
    "uint32": DT.UINT32,
    "int32": DT.INT32,
    "uint64": DT.UINT64,
    "int64": DT.INT64,
    "float32": DT.FLOAT32,
    "float64": DT.FLOAT64,
}
INT_RANGES = {
    "uint16": (0, 2**16 - 1),
    "int16": (-(2**15), 2**15 - 1),
    "uint32": (0, 2**32 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "uint64": (0, 2**64 - 1),
    "int64": (-(2**63), 2**63 - 1),
}

# Table name -> (canonical name, function code used for get/set, is_bits)
TABLES = {
    "coil": ("coils", 1, True),
    "coils": ("coils", 1, True),
    "discrete": ("discrete", 2, True),
    "discretes": ("discrete", 2, True),
    "discrete_input": ("discrete", 2, True),
    "discrete_inputs": ("discrete", 2, True),
    "di": ("discrete", 2, True),
    "holding": ("holding", 3, False),
    "holding_register": ("holding", 3, False),
    "holding_registers": ("holding", 3, False),
    "hr": ("holding", 3, False),
    "input": ("input", 4, False),
    "input_register": ("input", 4, False),
    "input_registers": ("input", 4, False),
    "ir": ("input", 4, False),
}

# Which table a function code touches, to check address ranges.
FC_BITS = {1, 2, 5, 15}
FC_REGS = {3, 4, 6, 16, 22, 23}


class SpecError(ValueError):
    """Bad spec entry or stdin command."""


def encode(type_name: str, value: Any, word_order: str) -> list[int]:
    """Encode value(s) to registers with pymodbus' own helper."""
    if type_name not in TYPES:
        raise SpecError(f"unknown type {type_name!r} (types: {', '.join(TYPES)})")
    if word_order not in ("big", "little"):
        raise SpecError(f"word_order must be 'big' or 'little', not {word_order!r}")
    values = value if isinstance(value, list) else [value]
    if not values:
        raise SpecError("empty value list")
    checked: list[int | float] = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise SpecError(f"value {v!r} is not a number")
        if type_name in INT_RANGES:
            if isinstance(v, float):
                if not v.is_integer():
                    raise SpecError(f"value {v!r} is not an integer for {type_name}")
                v = int(v)
            lo, hi = INT_RANGES[type_name]
            if not lo <= v <= hi:
                raise SpecError(f"value {v} out of range for {type_name}")
        else:
            v = float(v)
        checked.append(v)
    return ModbusClientMixin.convert_to_registers(
        checked if len(checked) > 1 else checked[0],
        TYPES[type_name],
        word_order=word_order,  # type: ignore[arg-type]
    )


def decode(type_name: str, registers: list[int], word_order: str) -> Any:
    """Decode registers with pymodbus' own helper."""
    if type_name not in TYPES:
        raise SpecError(f"unknown type {type_name!r}")
    if word_order not in ("big", "little"):
        raise SpecError(f"word_order must be 'big' or 'little', not {word_order!r}")
    return ModbusClientMixin.convert_from_registers(
        registers, TYPES[type_name], word_order=word_order  # type: ignore[arg-type]
    )


def parse_bit(text: Any) -> bool:
    """Parse a bit value from JSON or a command token."""
    if isinstance(text, bool):
        return text
    if isinstance(text, int) and text in (0, 1):
        return bool(text)
    if isinstance(text, str):
        low = text.strip().lower()
        if low in ("1", "true", "on"):
            return True
        if low in ("0", "false", "off"):
            return False
    raise SpecError(f"bit value must be 0/1/true/false, not {text!r}")


def check_span(address: int, count: int) -> None:
    if not (0 <= address and count >= 1 and address + count <= TABLE_SIZE):
        raise SpecError(
            f"address {address} count {count} outside 0..{TABLE_SIZE - 1}"
        )


def build_tables(spec: dict) -> dict[str, list]:
    """Initial table contents from the spec."""
    known = {"coils", "discrete", "holding", "input"}
    if not isinstance(spec, dict):
        raise SpecError("spec must be a JSON object")
    for key in spec:
        if key not in known:
            raise SpecError(f"unknown spec key {key!r} (keys: {', '.join(sorted(known))})")
    tables: dict[str, list] = {
        "coils": [False] * TABLE_SIZE,
        "discrete": [False] * TABLE_SIZE,
        "holding": [0] * TABLE_SIZE,
        "input": [0] * TABLE_SIZE,
    }
    for name in ("coils", "discrete"):
        for entry in spec.get(name, []):
            address = int(entry["address"])
            values = entry["value"] if isinstance(entry["value"], list) else [entry["value"]]
            check_span(address, len(values))
            for i, v in enumerate(values):
                tables[name][address + i] = parse_bit(v)
    for name in ("holding", "input"):
        for entry in spec.get(name, []):
            address = int(entry["address"])
            regs = encode(
                entry.get("type", "uint16"), entry["value"], entry.get("word_order", "big")
            )
            check_span(address, len(regs))
            tables[name][address : address + len(regs)] = regs
    return tables


class BoundedContext:
    """Wraps pymodbus' datastore (SimCore): one unit id, addresses 0..999 only.

    pymodbus packs coils 16 to a register, so without this check coils
    1000..1007 would be readable too.
    """

    def __init__(self, inner: Any, unit: int) -> None:
        self.inner = inner
        self.unit = unit

    def _check(self, device_id: int, func_code: int, address: int, count: int):
        if self.unit and device_id != self.unit:
            raise NoSuchIdException(f"unit {device_id} (serving unit {self.unit})")
        if (func_code in FC_BITS or func_code in FC_REGS) and not (
            address >= 0 and count >= 1 and address + count <= TABLE_SIZE
        ):
            return ExcCodes.ILLEGAL_ADDRESS
        return None

    def device_ids(self) -> list[int]:
        return self.inner.device_ids()

    async def async_getValues(
        self, device_id: int, func_code: int, address: int, count: int = 1
    ):
        if rc := self._check(device_id, func_code, address, count):
            return rc
        return await self.inner.async_getValues(self.unit, func_code, address, count)

    async def async_setValues(
        self, device_id: int, func_code: int, address: int, values: Sequence
    ):
        values = list(values)
        if rc := self._check(device_id, func_code, address, len(values)):
            return rc
        return await self.inner.async_setValues(self.unit, func_code, address, values)


def make_device(unit: int, tables: dict[str, list]) -> SimDevice:
    """A device with 4 separate tables (coils, discrete, holding, input)."""
    return SimDevice(
        id=unit,
        simdata=(
            [SimData(0, values=list(tables["coils"]), datatype=DataType.BITS)],
            [SimData(0, values=list(tables["discrete"]), datatype=DataType.BITS)],
            [SimData(0, values=list(tables["holding"]), datatype=DataType.REGISTERS)],
            [SimData(0, values=list(tables["input"]), datatype=DataType.REGISTERS)],
        ),
    )


class Peer:
    def __init__(self, server: Any, context: BoundedContext) -> None:
        self.server = server
        self.context = context
        self.out_lock = threading.Lock()

    def say(self, line: str) -> None:
        with self.out_lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    async def _get(self, fc: int, address: int, count: int) -> list:
        check_span(address, count)
        res = await self.context.inner.async_getValues(
            self.context.unit, fc, address, count
        )
        if isinstance(res, ExcCodes):
            raise SpecError(f"datastore refused read: {res.name}")
        return list(res)

    async def _set(self, fc: int, address: int, values: list) -> None:
        check_span(address, len(values))
        rc = await self.context.inner.async_setValues(
            self.context.unit, fc, address, values
        )
        if rc:
            raise SpecError(f"datastore refused write: {ExcCodes(rc).name}")

    async def command(self, line: str) -> str | None:
        words = line.split()
        if not words or words[0].startswith("#"):
            return None
        verb = words[0].lower()
        if verb not in ("get", "set") or len(words) < 3:
            raise SpecError(
                "usage: set TABLE ADDR [TYPE] VALUE [WORD_ORDER] | get TABLE ADDR [COUNT|TYPE [WORD_ORDER]]"
            )
        table = words[1].lower()
        if table not in TABLES:
            raise SpecError(f"unknown table {words[1]!r}")
        _, fc, is_bits = TABLES[table]
        try:
            address = int(words[2], 0)
        except ValueError as exc:
            raise SpecError(f"bad address {words[2]!r}") from exc
        rest = words[3:]

        if verb == "set":
            if is_bits:
                if not rest:
                    raise SpecError("set BIT-TABLE ADDR VALUE...")
                await self._set(fc, address, [parse_bit(w) for w in rest])
                return "OK"
            if len(rest) == 1:  # set holding 4 123  (raw uint16)
                type_name, value_text, word_order = "uint16", rest[0], "big"
            elif len(rest) in (2, 3):
                type_name, value_text = rest[0].lower(), rest[1]
                word_order = rest[2].lower() if len(rest) == 3 else "big"
            else:
                raise SpecError("set REG-TABLE ADDR TYPE VALUE [big|little]")
            try:
                value: int | float = (
                    int(value_text, 0) if type_name in INT_RANGES else float(value_text)
                )
            except ValueError as exc:
                raise SpecError(f"bad value {value_text!r} for {type_name}") from exc
            await self._set(fc, address, encode(type_name, value, word_order))
            return "OK"

        # get
        if not rest:
            count, type_name, word_order = 1, None, "big"
        elif rest[0].isdigit():
            count, type_name, word_order = int(rest[0]), None, "big"
            if len(rest) > 1:
                raise SpecError("get TABLE ADDR [COUNT]")
        else:
            if is_bits:
                raise SpecError("bit tables take: get TABLE ADDR [COUNT]")
            type_name = rest[0].lower()
            word_order = rest[1].lower() if len(rest) > 1 else "big"
            if type_name not in TYPES:
                raise SpecError(f"unknown type {type_name!r}")
            count = TYPES[type_name].value[1]
        values = await self._get(fc, address, count)
        if is_bits:
            return "VALUE " + ",".join("1" if v else "0" for v in values)
        if type_name is None:
            return "VALUE " + ",".join(str(int(v)) for v in values)
        return "VALUE " + str(decode(type_name, [int(v) for v in values], word_order))

    async def handle_line(self, line: str) -> None:
        try:
            reply = await self.command(line)
        except (SpecError, ValueError, KeyError) as exc:
            reply = f"ERR {exc}"
        if reply is not None:
            self.say(reply)


def stdin_reader(loop: asyncio.AbstractEventLoop, peer: Peer) -> None:
    """Read commands on a thread; EOF just ends this thread."""
    try:
        for line in sys.stdin:
            fut = asyncio.run_coroutine_threadsafe(peer.handle_line(line), loop)
            try:
                fut.result()
            except Exception as exc:  # pylint: disable=broad-except
                peer.say(f"ERR {exc}")
    except (OSError, ValueError, RuntimeError):
        pass


async def run(args: argparse.Namespace) -> int:
    try:
        with open(args.spec, encoding="utf-8") as f:
            spec = json.load(f)
        tables = build_tables(spec)
    except (OSError, json.JSONDecodeError, SpecError, KeyError, TypeError, ValueError) as exc:
        print(f"modbus_server: bad spec {args.spec}: {exc!r}", file=sys.stderr)
        return 2

    device = make_device(args.unit, tables)
    if args.serial:
        server = ModbusSerialServer(
            device,
            port=args.serial,
            baudrate=args.baud,
            parity=args.parity,
            ignore_missing_devices=True,
        )
    else:
        server = ModbusTcpServer(
            device,
            address=(args.host, args.port),
            ignore_missing_devices=args.ignore_other_units,
        )
    context = BoundedContext(server.context, args.unit)
    server.context = context

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    try:
        await server.serve_forever(background=True)
    except RuntimeError as exc:
        where = args.serial or f"{args.host}:{args.port}"
        print(f"modbus_server: cannot listen on {where}: {exc}", file=sys.stderr)
        return 1

    if args.serial:
        ready = args.serial
    else:
        sockets = getattr(server.transport, "sockets", None) or []
        ready = str(sockets[0].getsockname()[1]) if sockets else str(args.port)

    peer = Peer(server, context)
    peer.say(f"READY {ready}")
    threading.Thread(target=stdin_reader, args=(loop, peer), daemon=True).start()

    await stop.wait()
    await server.shutdown()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, default=5020, help="TCP port (0 = any free one)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--spec", required=True, help="JSON file with initial values")
    p.add_argument(
        "--unit",
        type=int,
        default=1,
        help="unit (slave/device) id to answer; 0 answers every id (default 1)",
    )
    p.add_argument(
        "--ignore-other-units",
        action="store_true",
        help="TCP: no reply to other unit ids (default: exception 0x0B)",
    )
    p.add_argument(
        "--log-level",
        default="WARNING",
        help="pymodbus log level on stderr, e.g. DEBUG to see every frame (default WARNING)",
    )
    p.add_argument("--serial", help="serve Modbus RTU on this serial device instead of TCP")
    p.add_argument("--baud", type=int, default=19200, help="RTU baud rate (default 19200)")
    p.add_argument(
        "--parity", default="N", choices=["N", "E", "O"], help="RTU parity (default N)"
    )
    args = p.parse_args(argv)
    if not 0 <= args.unit <= 247:
        p.error("--unit must be 0..247")
    if args.log_level.upper() != "WARNING":
        pymodbus_apply_logging_config(args.log_level.upper())
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
