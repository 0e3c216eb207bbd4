//! `crm-sync schemas`: every schema crm-sync writes or reads, with the fingerprint its Avro
//! single-object encoding carries (`C3 01`, then the 8 bytes of the CRC-64-AVRO fingerprint
//! of its Parsing Canonical Form, little-endian, then the datum), the topic it is on, and
//! its file. Producers copy the current schema's file and check their fingerprint against
//! this list; readers (data teams) accept every line of a topic, current and earlier.

use crm_common::config::Topics;
use crm_common::fingerprint::fingerprint_hex;
use crm_common::schemas::{RecordType, Registry, Versioned};

#[derive(Debug, clap::Args)]
pub struct SchemasArgs {
    /// One JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub topics: Topics,
}

/// One schema as the list shows it.
#[derive(Debug, serde::Serialize)]
pub struct Listed {
    /// The Avro full name.
    pub name: String,
    /// `current` (what this build writes) or `earlier` (still read: it may sit in topics).
    pub status: &'static str,
    /// The 8 fingerprint bytes as they follow `C3 01` on the wire, in hex.
    pub fingerprint: String,
    /// The same fingerprint as Java's `SchemaNormalization.parsingFingerprint64` returns it.
    pub fingerprint64: i64,
    pub topic: String,
    /// Under the repository's `schemas/`.
    pub file: String,
}

fn topic(rt: RecordType, t: &Topics) -> String {
    let writes = format!("{}<crm>", t.crm_writes_prefix);
    match rt {
        RecordType::CallEvent => t.calls_raw.clone(),
        RecordType::EmailEvent => t.emails_raw.clone(),
        RecordType::MeetingEvent => t.meetings_raw.clone(),
        RecordType::LeadEvent => t.leads_raw.clone(),
        RecordType::NormalisedCall => t.calls_normalised.clone(),
        RecordType::NormalisedEmail => t.emails_normalised.clone(),
        RecordType::NormalisedMeeting => t.meetings_normalised.clone(),
        RecordType::NormalisedLead => t.leads_normalised.clone(),
        RecordType::CrmWriteRequest => format!("{writes} (calls)"),
        RecordType::ActivityWriteRequest => format!("{writes} (emails, meetings)"),
        RecordType::AuditRecord => t.audit.clone(),
        RecordType::DeadLetter => t.dlq.clone(),
    }
}

/// The record's full name, as its Parsing Canonical Form spells it.
fn full_name(v: &Versioned) -> String {
    serde_json::from_str::<serde_json::Value>(&v.canonical).ok().and_then(|j| j["name"].as_str().map(String::from)).unwrap_or_default()
}

/// Every schema: per record type its current one, then the earlier ones readers still accept.
pub fn list(topics: &Topics) -> Vec<Listed> {
    let reg = Registry::global();
    let mut out = vec![];
    for rt in RecordType::ALL {
        let current = reg.current(rt);
        let listed = |v: &Versioned, status| Listed {
            name: full_name(v),
            status,
            fingerprint: fingerprint_hex(&v.fingerprint),
            fingerprint64: i64::from_le_bytes(v.fingerprint),
            topic: topic(rt, topics),
            file: format!("schemas/{}", v.path),
        };
        out.push(listed(current, "current"));
        // The registry holds each fingerprint once (the current schema's first): the rest of
        // this record's are the earlier ones, newest file first.
        let mut earlier: Vec<&Versioned> = reg.versions().filter(|v| v.record == rt && v.fingerprint != current.fingerprint).collect();
        earlier.sort_by(|a, b| b.path.cmp(&a.path));
        out.extend(earlier.into_iter().map(|v| listed(v, "earlier")));
    }
    out
}

pub fn run(args: SchemasArgs) -> anyhow::Result<()> {
    let all = list(&args.topics);
    if args.json {
        for l in &all {
            println!("{}", serde_json::to_string(l)?);
        }
        return Ok(());
    }
    println!("{:<40} {:<8} {:<17} {:<21} {:<38} FILE", "SCHEMA", "STATUS", "FINGERPRINT", "FINGERPRINT64", "TOPIC");
    for l in &all {
        println!("{:<40} {:<8} {:<17} {:<21} {:<38} {}", l.name, l.status, l.fingerprint, l.fingerprint64, l.topic, l.file);
    }
    println!(
        "\nOn the wire (Avro single-object encoding): C3 01, the 8 FINGERPRINT bytes, then the datum. \
         FINGERPRINT64 is the same value as Java's SchemaNormalization.parsingFingerprint64."
    );
    Ok(())
}
