#!/usr/bin/env python3
"""Produce a CallEvent, an EmailEvent, a MeetingEvent and a LeadEvent to crm-sync's raw
topics, as an upstream team would: Avro single-object encoding (crm_sync_avro), keyed by tenant id, with
confluent-kafka. Prints one line per event with its topic, partition, offset and schema
fingerprint.

    python3 examples/python/produce_events.py --bootstrap localhost:9092 --tenant acme
"""
import argparse
import sys
import time

from confluent_kafka import Producer

import crm_sync_avro as avro


def events(tenant, now_ms, suffix):
    call = {
        "tenant_id": tenant,
        "call_id": "example-call-" + suffix,
        "source": "examples/python",
        # Raise it for every change of the same call: the pipeline keeps the newest.
        "version": 1,
        "direction": "OUTBOUND",
        "from_number": "+1 650 253 0000",
        # National numbers are read in the region_hint's (or the tenant's) region.
        "to_number": "(415) 555-0134",
        "region_hint": "US",
        "started_at": now_ms - 300_000,
        "ended_at": now_ms - 120_000,
        "duration_s": 180,
        "outcome": "ANSWERED",
        "agent_id": "agent-7",
        "agent_email": "ada@acme.example",
        "recording_url": None,
        "notes": "Asked for a quote",
        "attributes": {"campaign": "q4"},
    }
    email = {
        "tenant_id": tenant,
        "message_id": "<example-%s@acme.example>" % suffix,
        "source": "examples/python",
        "version": 1,
        "thread_id": None,
        "in_reply_to": None,
        "direction": "SENT",
        "from": "ada@acme.example",
        "to": ["grace@customer.example"],
        "cc": [],
        "bcc": [],
        "subject": "Your quote",
        "body_text": "Hi Grace, the quote is attached.",
        "sent_at": now_ms - 60_000,
        "time_zone": "America/Los_Angeles",
        "actor_id": "agent-7",
        "actor_email": "ada@acme.example",
        "attributes": {},
    }
    meeting = {
        "tenant_id": tenant,
        "event_id": "example-meeting-" + suffix,
        "ical_uid": "example-%s@calendar.acme.example" % suffix,
        "recurrence_id": None,
        "source": "examples/python",
        "version": 1,
        "status": "CONFIRMED",
        "title": "Quote review",
        "description_text": None,
        "start_at": now_ms + 86_400_000,
        "end_at": now_ms + 86_400_000 + 1_800_000,
        "all_day": False,
        "start_date": None,
        "end_date": None,
        "time_zone": "America/Los_Angeles",
        "location": None,
        "conference_url": "https://meet.example/quote",
        "organizer": "ada@acme.example",
        "attendees": [
            {"address": "Grace <grace@customer.example>", "response": "ACCEPTED", "optional": False, "phone": None}
        ],
        "actor_id": "agent-7",
        "actor_email": "ada@acme.example",
        "attributes": {},
    }
    lead = {
        "tenant_id": tenant,
        # The form submission's id at the source: the same id again is the same lead.
        "lead_id": "example-lead-" + suffix,
        "source": "examples/python",
        "source_type": "FORM",
        "version": 1,
        "submitted_at": now_ms - 30_000,
        "email": "Linus.Prospect@Prospect.example",
        # Read in the lead's country (DE here), not the tenant's region.
        "phone": "030 901820",
        "first_name": "Linus",
        "last_name": "Prospect",
        "full_name": None,
        "company": "Prospect GmbH",
        "job_title": "Head of Sales",
        "country": "Germany",
        # DENIED: written to no CRM, only audited as skipped.
        "consent_to_processing": "GRANTED",
        "consent": {"marketing_email": "true"},
        "attribution": {
            "utm_source": "linkedin",
            "utm_medium": "paid-social",
            "utm_campaign": "q4-demo",
            "utm_term": None,
            "utm_content": None,
            "campaign_id": None,
            "ad_id": None,
            "form_id": "demo-request",
            "page_url": "https://acme.example/demo",
        },
        "answers": {"team_size": "11-50"},
        "attributes": {},
    }
    return [
        ("call", "call_event", call),
        ("email", "email_event", email),
        ("meeting", "meeting_event", meeting),
        ("lead", "lead_event", lead),
    ]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--tenant", default="acme")
    ap.add_argument("--kind", action="append", choices=["call", "email", "meeting", "lead"], help="default: all four")
    ap.add_argument("--suffix", default=str(int(time.time())), help="makes the events' ids unique")
    ap.add_argument("--topic-prefix", default="", help="only if the pipeline's TOPIC_* names differ")
    a = ap.parse_args()
    topics = {"call": "calls.raw", "email": "emails.raw", "meeting": "meetings.raw", "lead": "leads.raw"}
    # Idempotent and acks=all: a retried send is never written twice to the topic.
    p = Producer({"bootstrap.servers": a.bootstrap, "enable.idempotence": True, "acks": "all"})
    failed = []

    def report(kind, schema):
        def cb(err, msg):
            if err is not None:
                failed.append("%s: %s" % (kind, err))
            else:
                print("%s -> %s [%d] @%d (%s, fingerprint %s)" % (kind, msg.topic(), msg.partition(), msg.offset(), schema.name, schema.fingerprint.hex()))
        return cb

    for kind, schema_name, record in events(a.tenant, int(time.time() * 1000), a.suffix):
        if a.kind and kind not in a.kind:
            continue
        schema = avro.current(schema_name)
        # The key is the tenant id: one tenant's events stay in order on one partition.
        p.produce(a.topic_prefix + topics[kind], key=a.tenant.encode(), value=avro.encode(schema, record), on_delivery=report(kind, schema))
    if p.flush(30) > 0:
        failed.append("not delivered within 30 s")
    if failed:
        sys.exit("failed: " + "; ".join(failed))


if __name__ == "__main__":
    main()
