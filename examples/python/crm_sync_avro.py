"""Avro single-object encoding for crm-sync's topics, with fastavro.

Every message on a crm-sync topic is one Avro datum in single-object encoding, the bytes
Java's `BinaryMessageEncoder` / a generated class's `toByteBuffer()` writes:

    C3 01 | CRC-64-AVRO fingerprint of the schema's Parsing Canonical Form (8 bytes,
            little-endian) | the datum in Avro binary

`crm-sync schemas` lists every schema with its fingerprint; this module computes the same
from the .avsc files under `schemas/` (current and `history/`), so a reader accepts every
version that may sit in a topic.
"""
import glob
import io
import json
import os
import struct

import fastavro

MAGIC = b"\xc3\x01"
SCHEMAS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "schemas")


class Schema:
    def __init__(self, path):
        self.path = os.path.relpath(path, SCHEMAS)
        self.parsed = fastavro.parse_schema(json.load(open(path)), _force=True)
        canonical = fastavro.schema.to_parsing_canonical_form(self.parsed)
        self.fingerprint = bytes.fromhex(fastavro.schema.fingerprint(canonical, "CRC-64-AVRO"))
        self.name = self.parsed["name"]
        # Java's SchemaNormalization.parsingFingerprint64: the same 8 bytes as a signed long.
        self.fingerprint64 = struct.unpack("<q", self.fingerprint)[0]


def load(root=SCHEMAS):
    """Every schema under `root`: {fingerprint bytes: Schema}, current and earlier."""
    out = {}
    for path in sorted(glob.glob(os.path.join(root, "**", "*.avsc"), recursive=True)):
        s = Schema(path)
        out.setdefault(s.fingerprint, s)
    return out


def current(name, root=SCHEMAS):
    """The schema this build writes for `name` (`call_event`, `email_event`, …)."""
    return Schema(os.path.join(root, name + ".avsc"))


def encode(schema, record):
    buf = io.BytesIO()
    buf.write(MAGIC)
    buf.write(schema.fingerprint)
    fastavro.schemaless_writer(buf, schema.parsed, record)
    return buf.getvalue()


def decode(data, schemas):
    """(Schema, record) of a message; ValueError says why it is not one of crm-sync's."""
    if len(data) < 10 or data[:2] != MAGIC:
        raise ValueError("not Avro single-object encoding (no C3 01 marker)")
    schema = schemas.get(data[2:10])
    if schema is None:
        raise ValueError("unknown schema fingerprint %s (crm-sync schemas lists them)" % data[2:10].hex())
    return schema, fastavro.schemaless_reader(io.BytesIO(data[10:]), schema.parsed)
