#!/usr/bin/env python3
"""Read `sync.audit` and `sync.dlq` as a data team would: every message decoded by the
schema its fingerprint names (current or earlier, crm_sync_avro), printed as one JSON object
per line with its topic. Its own consumer group; stops after --idle seconds without a
message or at --max messages.

    python3 examples/python/read_outcomes.py --bootstrap localhost:9092 --group analytics
"""
import argparse
import json
import sys
import time

from confluent_kafka import Consumer

import crm_sync_avro as avro


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--group", default="crm-sync-example-reader")
    ap.add_argument("--topic", action="append", help="default: sync.audit and sync.dlq")
    ap.add_argument("--idle", type=float, default=10.0)
    ap.add_argument("--max", type=int, default=0)
    a = ap.parse_args()
    schemas = avro.load()
    c = Consumer({"bootstrap.servers": a.bootstrap, "group.id": a.group, "auto.offset.reset": "earliest", "enable.auto.commit": True})
    c.subscribe(a.topic or ["sync.audit", "sync.dlq"])
    seen, last = 0, time.time()
    try:
        while time.time() - last < a.idle and (a.max == 0 or seen < a.max):
            m = c.poll(0.5)
            if m is None:
                continue
            if m.error():
                print("error: %s" % m.error(), file=sys.stderr)
                continue
            last = time.time()
            seen += 1
            try:
                schema, record = avro.decode(m.value(), schemas)
            except ValueError as e:
                # Never silently skipped: say which message and why.
                print(json.dumps({"topic": m.topic(), "partition": m.partition(), "offset": m.offset(), "error": str(e)}))
                continue
            # bytes fields (a dead letter's payload) as hex.
            record = {k: (v.hex() if isinstance(v, bytes) else v) for k, v in record.items()}
            print(json.dumps({"topic": m.topic(), "schema": schema.name, "record": record}, default=str))
    finally:
        c.close()


if __name__ == "__main__":
    main()
