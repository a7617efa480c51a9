"""A sample writer of the usual kind: one process generates N devices x M tags every interval,
writes them to InfluxDB with the `influxdb` client's `write_points` (one point per device and
timestamp with every tag as a field, as Fieldline stores them) and upserts the latest value of
each tag into MariaDB with pymysql `executemany` (INSERT ... ON DUPLICATE KEY UPDATE), one
write of each per batch of up to --batch-points samples or --batch-delay seconds.

Used by `fieldline-bench storage` as the reference `fieldline-storage` is compared with; the
values are the ones the bench sends to storage. With --generate-only it builds the same points
and rows but writes nothing, so the bench can tell generation cost from writing cost.

Prints `POINTS <total>` (samples written to both databases), `LAST_TS <ns>` (the newest
timestamp written), `WRITES <n>` and `INFLUX_S`/`MYSQL_S` (seconds spent in the writes to each
database) once a second and, after SIGTERM, once more when the last batch is written.
"""

import argparse
import math
import signal
import sys
import time
from urllib.parse import urlsplit

# Same statement semantics as Fieldline's MySQL sink: the latest value never moves back.
UPSERT = (
    "INSERT INTO latest_values (line, device, tag, value_type, value_text, value_num, quality,"
    " quality_detail, source_ns) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
    " ON DUPLICATE KEY UPDATE"
    " value_type = IF(VALUES(source_ns) >= source_ns, VALUES(value_type), value_type),"
    " value_text = IF(VALUES(source_ns) >= source_ns, VALUES(value_text), value_text),"
    " value_num = IF(VALUES(source_ns) >= source_ns, VALUES(value_num), value_num),"
    " quality = IF(VALUES(source_ns) >= source_ns, VALUES(quality), quality),"
    " quality_detail = IF(VALUES(source_ns) >= source_ns, VALUES(quality_detail), quality_detail),"
    " source_ns = GREATEST(source_ns, VALUES(source_ns))"
)


def kind(index):
    """Three of five tags are floats, one an integer, one a boolean (as the bench sends)."""
    return ("float", "float", "float", "int", "bool")[index % 5]


def generate(line, devices, tags, tick, ts):
    """The points (one per device) and latest_values rows (one per tag) of one interval."""
    points = []
    rows = []
    for device in devices:
        fields = {}
        for i, (name, k) in enumerate(tags):
            if k == "float":
                v = math.sin(tick * 0.01 + i) * 100.0
                text = repr(v)
                num = v
            elif k == "int":
                v = tick * (i + 1)
                text = str(v)
                num = float(v)
            else:
                v = (tick + i) % 2 == 0
                text = "true" if v else "false"
                num = 1.0 if v else 0.0
            fields[name] = v
            rows.append((line, device, name, k, text, num, "good", "", ts))
        points.append({
            "measurement": device,
            "tags": {"line": line, "device": device},
            "time": ts,
            "fields": fields,
        })
    return points, rows


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--line", required=True)
    p.add_argument("--devices", type=int, required=True)
    p.add_argument("--tags", type=int, required=True)
    p.add_argument("--interval", type=float, required=True, help="seconds between intervals")
    p.add_argument("--batch-points", type=int, default=5000)
    p.add_argument("--batch-delay", type=float, default=0.05, help="seconds")
    p.add_argument("--influx-url", default="http://127.0.0.1:8086")
    p.add_argument("--influx-db")
    p.add_argument("--mysql-url", help="mysql://user[:password]@host:port/database")
    p.add_argument("--generate-only", action="store_true")
    args = p.parse_args()

    running = True

    def stop(*_):
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, stop)

    influx = db = None
    if not args.generate_only:
        from influxdb import InfluxDBClient
        import pymysql

        u = urlsplit(args.influx_url)
        influx = InfluxDBClient(host=u.hostname, port=u.port or 8086, database=args.influx_db)
        influx.create_database(args.influx_db)
        m = urlsplit(args.mysql_url)
        db = pymysql.connect(
            host=m.hostname,
            port=m.port or 3306,
            user=m.username or "root",
            password=m.password or "",
            database=m.path.lstrip("/"),
        )

    devices = [f"d{d}" for d in range(args.devices)]
    tags = [(f"t{i:03d}", kind(i)) for i in range(args.tags)]
    written = 0
    last_ts = 0
    writes = 0
    influx_s = mysql_s = 0.0
    points, rows = [], []
    first_pending = None

    def flush():
        nonlocal written, last_ts, points, rows, first_pending, writes, influx_s, mysql_s
        if not args.generate_only:
            t0 = time.monotonic()
            influx.write_points(points, time_precision="n", batch_size=args.batch_points)
            t1 = time.monotonic()
            with db.cursor() as cur:
                cur.executemany(UPSERT, rows)
            db.commit()
            influx_s += t1 - t0
            mysql_s += time.monotonic() - t1
            writes += 1
        written += len(rows)
        last_ts = max(last_ts, points[-1]["time"])
        points, rows = [], []
        first_pending = None

    def report():
        print(
            f"POINTS {written}\nLAST_TS {last_ts}\nWRITES {writes}\nINFLUX_S {influx_s}\nMYSQL_S {mysql_s}",
            flush=True,
        )

    tick = 0
    next_tick = time.monotonic()
    last_report = next_tick
    while running:
        now = time.monotonic()
        if now >= next_tick:
            tick += 1
            p_new, r_new = generate(args.line, devices, tags, tick, time.time_ns())
            points += p_new
            rows += r_new
            if first_pending is None:
                first_pending = now
            # Behind schedule the rate drops rather than bursting to catch up.
            next_tick = max(next_tick + args.interval, now)
        if rows and (len(rows) >= args.batch_points or now - first_pending >= args.batch_delay):
            flush()
        now = time.monotonic()
        if now - last_report >= 1.0:
            report()
            last_report = now
        wake = next_tick if first_pending is None else min(next_tick, first_pending + args.batch_delay)
        time.sleep(max(0.0, wake - time.monotonic()))
    if rows:
        flush()
    report()
    if db is not None:
        db.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
