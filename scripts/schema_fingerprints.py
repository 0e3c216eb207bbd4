#!/usr/bin/env python3
"""Prints, as JSON, each .avsc's Parsing Canonical Form and CRC-64-AVRO fingerprint as
Python fastavro computes them. The codec test compares crm-common's own computation with
this independent implementation (apache-avro's canonical form differs for logical types)."""
import glob, json, os, sys
import fastavro

root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "schemas")
out = {}
for path in sorted(glob.glob(os.path.join(root, "**", "*.avsc"), recursive=True)):
    parsed = fastavro.parse_schema(json.load(open(path)), _force=True)
    pcf = fastavro.schema.to_parsing_canonical_form(parsed)
    out[os.path.relpath(path, root)] = {
        "canonical": pcf,
        "fingerprint": fastavro.schema.fingerprint(pcf, "CRC-64-AVRO"),
    }
json.dump(out, sys.stdout, indent=1, sort_keys=True)
