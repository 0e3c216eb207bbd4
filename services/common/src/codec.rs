//! Avro framing for every topic: single-object encoding (`C3 01`, the writer schema's
//! 8-byte CRC-64-AVRO fingerprint, then the datum) on write; on read also the Confluent
//! Schema Registry framing (`00`, a 4-byte big-endian schema id) for ids a registry has
//! given us. Anything we cannot identify or decode is a `DecodeError`, which the stages
//! turn into a `SCHEMA_INVALID` dead letter carrying the original bytes.
//!
//! Two Avro libraries, each for what it does best. Every record is written, and every
//! record in the current version of its schema is read, by `serde_avro_fast`: it walks the
//! schema in field order straight to and from the Rust type. apache-avro's serde path looks
//! every field up by name in a `BTreeMap` and allocates as it goes: encoding two records per
//! input took a fifth of the normaliser's CPU with it, decoding another 7%. apache-avro
//! stays for what only it does here: resolving an older (or a registry's) writer schema into
//! the current one, filling the defaults of fields the writer did not have.

use crate::events::AvroRecord;
use crate::fingerprint::fingerprint_hex;
use crate::schemas::{RecordType, Registry, Versioned};
use apache_avro::reader::datum::GenericDatumReader;
use std::collections::HashMap;
use std::io::{BufRead, Cursor};
use std::sync::{Arc, OnceLock, RwLock};

pub const SINGLE_OBJECT_MAGIC: [u8; 2] = [0xC3, 0x01];
pub const CONFLUENT_MAGIC: u8 = 0x00;

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("message is empty")]
    Empty,
    #[error("message is {0} bytes, too short for an Avro frame")]
    Truncated(usize),
    #[error("unknown framing: first bytes {0:02x?} are neither Avro single-object (c3 01) nor Confluent (00)")]
    UnknownFraming(Vec<u8>),
    #[error("writer schema fingerprint {0} is not a schema crm-sync has shipped")]
    UnknownFingerprint(String),
    #[error("Confluent schema id {0} is not known (no schema registry configured, or the registry does not have it)")]
    UnknownConfluentId(u32),
    #[error("record is a {found:?}, expected a {expected:?}")]
    WrongRecord { expected: RecordType, found: RecordType },
    #[error("datum does not decode with writer schema {schema}: {source}")]
    Datum { schema: String, source: DatumError },
    #[error("datum decoded but left {0} trailing bytes")]
    TrailingBytes(usize),
}

/// What the Avro library that read a datum said was wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum DatumError {
    #[error(transparent)]
    Resolving(#[from] apache_avro::Error),
    #[error(transparent)]
    Current(#[from] serde_avro_fast::de::DeError),
}

#[derive(Debug, thiserror::Error)]
#[error("cannot encode {record:?}: {source}")]
pub struct EncodeError {
    record: RecordType,
    source: serde_avro_fast::ser::SerError,
}

/// The current schema of every record type, in `serde_avro_fast`'s form (parsed from its
/// canonical form, which is what the fingerprint names), built once.
struct Current(HashMap<RecordType, serde_avro_fast::Schema>);

fn current() -> &'static Current {
    static C: OnceLock<Current> = OnceLock::new();
    C.get_or_init(|| {
        let reg = Registry::global();
        Current(RecordType::ALL.into_iter().map(|rt| (rt, reg.current(rt).canonical.parse().expect("compiled-in schemas parse"))).collect())
    })
}

/// Encodes `value` with the current schema of its record type, single-object framed.
pub fn encode<T: AvroRecord>(value: &T) -> Result<Vec<u8>, EncodeError> {
    let record = T::RECORD;
    let fingerprint = Registry::global().current(record).fingerprint;
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(&SINGLE_OBJECT_MAGIC);
    out.extend_from_slice(&fingerprint);
    let mut config = serde_avro_fast::ser::SerializerConfig::new(&current().0[&record]);
    serde_avro_fast::to_datum(value, out, &mut config).map_err(|source| EncodeError { record, source })
}

/// Encodes a `record` whose field `field` (a record) is already encoded: `head` serialises
/// the fields before it, `inner` is its datum, `tail` serialises the fields after it. Avro
/// writes a record as its fields one after another, with no length or marker, and a nested
/// record the same way, so the three written back to back are the record's datum. The
/// deduper uses this to put a call's datum, as the normaliser wrote it, into each CRM's
/// write request without decoding and encoding it again (`current_datum`). `head` and
/// `tail` are checked against the fields their part of the schema has, by name and order,
/// as any record is.
pub fn encode_around(cut: &Cut, head: &impl serde::Serialize, inner: &[u8], tail: &impl serde::Serialize) -> Result<Vec<u8>, EncodeError> {
    let record = cut.record;
    let parts = cut.parts();
    let mut out = Vec::with_capacity(64 + inner.len());
    out.extend_from_slice(&SINGLE_OBJECT_MAGIC);
    out.extend_from_slice(&Registry::global().current(record).fingerprint);
    let mut config = serde_avro_fast::ser::SerializerConfig::new(&parts.head);
    let mut out = serde_avro_fast::to_datum(head, out, &mut config).map_err(|source| EncodeError { record, source })?;
    out.extend_from_slice(inner);
    let mut config = serde_avro_fast::ser::SerializerConfig::new(&parts.tail);
    serde_avro_fast::to_datum(tail, out, &mut config).map_err(|source| EncodeError { record, source })
}

/// A record's current schema cut at one field (itself a record), for [`encode_around`]: the
/// fields before it and the fields after it, each as a record schema of its own. Declared
/// once, as a `static` (`events::CALL_IN_WRITE_REQUEST`), and built on first use, so a
/// message pays no lookup for it.
pub struct Cut {
    record: RecordType,
    field: &'static str,
    parts: OnceLock<Around>,
}

struct Around {
    head: serde_avro_fast::Schema,
    tail: serde_avro_fast::Schema,
}

impl Cut {
    pub const fn new(record: RecordType, field: &'static str) -> Cut {
        Cut { record, field, parts: OnceLock::new() }
    }

    fn parts(&self) -> &Around {
        self.parts.get_or_init(|| {
            let (record, field) = (self.record, self.field);
            // The parsing canonical form names every type in full and defines each where it
            // is first used: a part is a schema of its own as long as it uses no type the
            // other parts define (true of every record this is used for; the tests encode
            // each).
            let canonical: serde_json::Value =
                serde_json::from_str(&Registry::global().current(record).canonical).expect("a canonical form is JSON");
            let fields = canonical["fields"].as_array().expect("a record has fields");
            let at = fields.iter().position(|f| f["name"] == field).unwrap_or_else(|| panic!("{record:?} has no field {field}"));
            let part = |name: &str, fields: &[serde_json::Value]| -> serde_avro_fast::Schema {
                serde_json::json!({"type": "record", "name": name, "fields": fields})
                    .to_string()
                    .parse()
                    .unwrap_or_else(|e| panic!("{record:?} cut at {field}: {e}"))
            };
            Around { head: part("crm_sync.codec.Head", &fields[..at]), tail: part("crm_sync.codec.Tail", &fields[at + 1..]) }
        })
    }
}

/// The datum of `bytes` when it is single-object framed with `T`'s current schema: what
/// `encode_around` takes as an inner record, and what `decode_view` reads in place. None
/// for any other framing or schema version (decode it with `decode` instead).
pub fn current_datum<T: AvroRecord>(bytes: &[u8]) -> Option<&[u8]> {
    match bytes {
        [0xC3, 0x01, rest @ ..] if rest.len() >= 8 && rest[..8] == Registry::global().current(T::RECORD).fingerprint => Some(&rest[8..]),
        _ => None,
    }
}

/// Reads a datum of `T`'s current schema (from `current_datum`) into `V`, a view of the
/// record that borrows its strings from `datum` instead of copying each: every field is
/// read and checked as `decode` checks it, and none is allocated.
pub fn decode_view<'a, T: AvroRecord, V: serde::Deserialize<'a>>(datum: &'a [u8]) -> Result<V, DecodeError> {
    let current = Registry::global().current(T::RECORD);
    let mut config = serde_avro_fast::de::DeserializerConfig::new(&self::current().0[&T::RECORD]);
    config.max_seq_size = MAX_DECODE_ELEMENTS;
    let mut state = serde_avro_fast::de::DeserializerState::with_config(serde_avro_fast::de::read::SliceRead::new(datum), config);
    let view = V::deserialize(state.deserializer())
        .map_err(|e| DecodeError::Datum { schema: current.path.clone(), source: DatumError::Current(e) })?;
    match state.into_reader().fill_buf().map_or(0, <[u8]>::len) {
        0 => Ok(view),
        left => Err(DecodeError::TrailingBytes(left)),
    }
}

/// Schemas learnt from a Confluent Schema Registry, by id. Shared by a service's tasks.
#[derive(Default, Clone)]
pub struct ConfluentSchemas(Arc<RwLock<HashMap<u32, Arc<Versioned>>>>);

impl ConfluentSchemas {
    pub fn insert(&self, id: u32, schema: Versioned) {
        self.0.write().expect("lock").insert(id, Arc::new(schema));
    }
    fn get(&self, id: u32) -> Option<Arc<Versioned>> {
        self.0.read().expect("lock").get(&id).cloned()
    }

    /// From `CONFLUENT_SCHEMA_IDS`: `id=fingerprint` pairs, comma-separated, each naming the
    /// id a Schema Registry gave one of crm-sync's schemas (registered as shipped) and that
    /// schema's fingerprint as `crm-sync schemas` prints it. An id twice, or a fingerprint
    /// crm-sync never shipped, is an error: a message would otherwise be read with the wrong
    /// schema.
    pub fn from_config(spec: &str) -> Result<ConfluentSchemas, String> {
        let reg = Registry::global();
        let out = ConfluentSchemas::default();
        let mut seen = std::collections::HashSet::new();
        for pair in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (id, fp) = pair.split_once('=').ok_or_else(|| format!("{pair:?} is not id=fingerprint"))?;
            let id: u32 = id.trim().parse().map_err(|_| format!("{pair:?}: the id is not a number"))?;
            let fp = fp.trim().to_ascii_lowercase();
            let v = reg
                .versions()
                .find(|v| fingerprint_hex(&v.fingerprint) == fp)
                .ok_or_else(|| format!("{pair:?}: no schema crm-sync ships has fingerprint {fp} (crm-sync schemas lists them)"))?;
            if !seen.insert(id) {
                return Err(format!("schema id {id} is given twice"));
            }
            out.insert(id, v.clone());
        }
        Ok(out)
    }
}

/// Decodes a single-object framed message (any shipped version of `T`'s schema).
pub fn decode<T: AvroRecord>(bytes: &[u8]) -> Result<T, DecodeError> {
    decode_with(bytes, None)
}

/// As `decode`, also accepting Confluent framing for ids in `confluent`.
pub fn decode_with<T: AvroRecord>(bytes: &[u8], confluent: Option<&ConfluentSchemas>) -> Result<T, DecodeError> {
    let reg = Registry::global();
    match bytes {
        [] => Err(DecodeError::Empty),
        [0xC3, 0x01, rest @ ..] => {
            let fp: [u8; 8] = rest.get(..8).and_then(|s| s.try_into().ok()).ok_or(DecodeError::Truncated(bytes.len()))?;
            let writer = reg.by_fingerprint(&fp).ok_or_else(|| DecodeError::UnknownFingerprint(fingerprint_hex(&fp)))?;
            if writer.record != T::RECORD {
                return Err(DecodeError::WrongRecord { expected: T::RECORD, found: writer.record });
            }
            read_datum(writer, &rest[8..])
        }
        [CONFLUENT_MAGIC, rest @ ..] => {
            let id =
                rest.get(..4).map(|s| u32::from_be_bytes(s.try_into().expect("4 bytes"))).ok_or(DecodeError::Truncated(bytes.len()))?;
            let writer = confluent.and_then(|c| c.get(id)).ok_or(DecodeError::UnknownConfluentId(id))?;
            if writer.record != T::RECORD {
                return Err(DecodeError::WrongRecord { expected: T::RECORD, found: writer.record });
            }
            read_datum(&writer, &rest[4..])
        }
        other => Err(DecodeError::UnknownFraming(other.iter().take(2).copied().collect())),
    }
}

/// The most one decoded string, byte array or collection may claim. apache-avro allocates
/// what a length prefix says before reading it, 512 MiB by default: ten hostile bytes could
/// cost half a gigabyte each. No field of ours comes near this, and no Kafka message is
/// larger than the broker's message.max.bytes (1 MiB by default).
pub const MAX_DECODE_ALLOCATION: usize = 4 << 20;

/// The most elements one decoded array or map may claim (`serde_avro_fast` reads strings
/// and bytes from the message itself, so a length prefix longer than what is left is
/// refused unread).
const MAX_DECODE_ELEMENTS: usize = MAX_DECODE_ALLOCATION;

/// A resolving reader per older schema version crm-sync has shipped, built once: resolving
/// a schema's names costs more than decoding a datum with it. Such a version reads with the
/// current one as its reader schema. The current versions are read by `serde_avro_fast`.
struct Readers(HashMap<[u8; 8], GenericDatumReader<'static>>);

fn readers() -> &'static Readers {
    static R: OnceLock<Readers> = OnceLock::new();
    R.get_or_init(|| {
        let reg = Registry::global();
        Readers(
            reg.versions()
                .filter(|v| v.fingerprint != reg.current(v.record).fingerprint)
                .map(|v| {
                    let r = GenericDatumReader::builder(&v.schema)
                        .reader_schema(&reg.current(v.record).schema)
                        .human_readable(false)
                        .build()
                        .expect("compiled-in schemas resolve");
                    (v.fingerprint, r)
                })
                .collect(),
        )
    })
}

/// A datum written with `writer` (a shipped schema, or one a registry gave us: the same
/// canonical form has the same fingerprint, and so the same prepared reader).
fn read_datum<T: AvroRecord>(writer: &Versioned, datum: &[u8]) -> Result<T, DecodeError> {
    let current = Registry::global().current(T::RECORD);
    let err = |source: DatumError| DecodeError::Datum { schema: writer.path.clone(), source };
    let trailing = |left: usize| if left == 0 { Ok(()) } else { Err(DecodeError::TrailingBytes(left)) };
    if writer.fingerprint == current.fingerprint {
        let mut config = serde_avro_fast::de::DeserializerConfig::new(&self::current().0[&T::RECORD]);
        config.max_seq_size = MAX_DECODE_ELEMENTS;
        let mut state = serde_avro_fast::de::DeserializerState::with_config(serde_avro_fast::de::read::SliceRead::new(datum), config);
        let record = T::deserialize(state.deserializer()).map_err(|e| err(e.into()))?;
        let left = state.into_reader().fill_buf().map_or(0, <[u8]>::len);
        return trailing(left).map(|()| record);
    }
    // Set once per process, before the first decode allocates.
    apache_avro::util::max_allocation_bytes(MAX_DECODE_ALLOCATION);
    let mut cursor = Cursor::new(datum);
    // An older (or newer) writer is resolved into the current schema, which fills defaults
    // for fields the writer did not have and drops ones we no longer know.
    let value = match readers().0.get(&writer.fingerprint) {
        Some(reader) => reader.read_value(&mut cursor).map_err(|e| err(e.into()))?,
        // A schema a registry gave us: resolved here, once per message.
        None => GenericDatumReader::builder(&writer.schema)
            .reader_schema(&current.schema)
            .build()
            .map_err(|e| err(e.into()))?
            .read_value(&mut cursor)
            .map_err(|e| err(e.into()))?,
    };
    trailing(datum.len() - cursor.position() as usize)?;
    apache_avro::from_value::<T>(&value).map_err(|e| err(e.into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emit::Emitter;
    use crate::events::*;
    use crate::schemas::Versioned;
    use std::collections::HashMap;

    pub(crate) fn sample_call() -> CallEvent {
        CallEvent {
            tenant_id: "acme".into(),
            call_id: "c-1".into(),
            source: "aircall".into(),
            version: 3,
            direction: CallDirection::Outbound,
            from_number: "(415) 555-2671".into(),
            to_number: "+44 20 7946 0958".into(),
            region_hint: Some("US".into()),
            started_at: 1_700_000_000_000,
            ended_at: Some(1_700_000_125_000),
            duration_s: Some(125),
            outcome: Some(CallOutcome::Answered),
            agent_id: "u-7".into(),
            agent_email: None,
            recording_url: Some("https://rec.example/1".into()),
            notes: Some("café ☕ follow-up".into()),
            attributes: HashMap::from([("queue".into(), "sales".into())]),
        }
    }

    fn sample_normalised() -> NormalisedCall {
        NormalisedCall {
            tenant_id: "acme".into(),
            call_id: "c-1".into(),
            source: "aircall".into(),
            version: 3,
            direction: CallDirection::Inbound,
            from_e164: "+14155552671".into(),
            to_e164: "+442079460958".into(),
            customer_e164: "+14155552671".into(),
            from_raw: "(415) 555-2671".into(),
            to_raw: "+44 20 7946 0958".into(),
            region_used: "US".into(),
            started_at: 1,
            ended_at: None,
            duration_s: None,
            outcome: None,
            agent_id: "u".into(),
            agent_email: Some("a@b.c".into()),
            recording_url: None,
            notes: None,
            attributes: HashMap::new(),
            normalised_at: 2,
        }
    }

    /// `value` round-trips, and `serde_avro_fast` writes the very bytes apache-avro writes
    /// for it (and reads apache-avro's): the two libraries agree on every record we have.
    fn round_trips<T: AvroRecord + PartialEq + std::fmt::Debug>(value: &T) {
        let ours = encode(value).unwrap();
        assert_eq!(&decode::<T>(&ours).unwrap(), value);
        let schema = &Registry::global().current(T::RECORD).schema;
        let theirs = apache_avro::writer::datum::GenericDatumWriter::builder(schema).build().unwrap().write_ser_to_vec(value).unwrap();
        assert_eq!(&ours[10..], &theirs[..], "{:?}: serde_avro_fast and apache-avro disagree", T::RECORD);
        let value_tree = GenericDatumReader::builder(schema).build().unwrap().read_value(&mut Cursor::new(&ours[10..])).unwrap();
        assert_eq!(&apache_avro::from_value::<T>(&value_tree).unwrap(), value, "{:?}: apache-avro reads ours", T::RECORD);
    }

    #[test]
    fn frame_starts_with_magic_and_current_fingerprint() {
        let bytes = encode(&sample_call()).unwrap();
        assert_eq!(&bytes[..2], &SINGLE_OBJECT_MAGIC);
        assert_eq!(&bytes[2..10], &Registry::global().current(RecordType::CallEvent).fingerprint);
    }

    #[test]
    fn every_record_round_trips() {
        let call = sample_call();
        round_trips(&call);
        let n = sample_normalised();
        round_trips(&n);
        let w = CrmWriteRequest {
            tenant_id: "acme".into(),
            call_id: "c-1".into(),
            crm: Crm::Zoho,
            idempotency_key: "acme:c-1:zoho".into(),
            version: 3,
            call: n,
            requested_at: 5,
            trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
        };
        round_trips(&w);
        // Emails and meetings ride beside calls in their own request record.
        for r in [fixtures::email_request("acme", "m1", Crm::Hubspot), fixtures::meeting_request("acme", "e1", Crm::Salesforce)] {
            round_trips(&r);
            assert!(decode::<CrmWriteRequest>(&encode(&r).unwrap()).is_err(), "a reader of calls' requests tells it apart by fingerprint");
        }
        assert_eq!(fixtures::email_request("acme", "m1", Crm::Hubspot).idempotency_key, "acme:email:m1@mail.acme.example:hubspot");
        assert_eq!(
            idempotency_key("acme", "c-1", Crm::Zoho),
            activity_key("acme", ActivityKind::Call, "c-1", Crm::Zoho),
            "calls keep their key"
        );
        let a = AuditRecord {
            audit_id: "id".into(),
            tenant_id: "acme".into(),
            call_id: None,
            crm: Some(Crm::Pipedrive),
            stage: Stage::Writer,
            operation: "crm.create_call".into(),
            outcome: AuditOutcome::DeadLettered,
            reason: Some("VALIDATION".into()),
            detail: "x".into(),
            attempt: 2,
            version: Some(1),
            idempotency_key: None,
            crm_status: Some(400),
            crm_response_excerpt: Some("{}".into()),
            crm_record_id: None,
            latency_ms: Some(12),
            input_topic: "t".into(),
            input_partition: 1,
            input_offset: 99,
            occurred_at: 7,
            trace_id: "t".into(),
            attributes: HashMap::from([("k".into(), "v".into())]),
            kind: Some(ActivityKind::Email),
        };
        round_trips(&a);
        let d = DeadLetter {
            dlq_id: "d".into(),
            tenant_id: "".into(),
            call_id: None,
            crm: None,
            stage: Stage::Normaliser,
            reason: DlqReason::SchemaInvalid,
            detail: "bad".into(),
            source_topic: "calls.raw".into(),
            source_partition: 0,
            source_offset: 4,
            source_key: Some(vec![0, 255, 1]),
            payload: vec![0xC3, 0x01, 0xFF],
            attempt: 1,
            replay_count: 0,
            crm_status: None,
            crm_response_excerpt: None,
            failed_at: 9,
            trace_id: "t".into(),
            kind: None,
        };
        round_trips(&d);
        round_trips(&fixtures::raw_email("acme", "m1", 3));
        round_trips(&fixtures::raw_meeting("acme", "e1", 3));
        round_trips(&fixtures::raw_lead("acme", "l1", 3));
        round_trips(&fixtures::normalised_lead("acme", "l1", 3));
        let lead = fixtures::lead_request("acme", "l1", Crm::Pipedrive);
        round_trips(&lead);
        assert_eq!(lead.idempotency_key, "acme:lead:l1:pipedrive", "the key the issue names");
        match WriteRequest::try_from(lead.clone()).expect("whole") {
            WriteRequest::Lead { req, lead: body } => {
                assert_eq!((req.kind, req.idempotency_key.as_str()), (ActivityKind::Lead, "acme:lead:l1:pipedrive"));
                assert_eq!(Some(*body), lead.lead);
            }
            other => panic!("{other:?}"),
        }
        let mut both = fixtures::lead_request("acme", "l1", Crm::Pipedrive);
        both.email = fixtures::email_request("acme", "m1", Crm::Pipedrive).email;
        let refused = WriteRequest::try_from(both.clone()).expect_err("two bodies");
        assert!(refused.why.contains("email: set, meeting: null, lead: set"), "{}", refused.why);
        assert_eq!(*refused.req, both, "a refused request keeps its bodies for its dead letter");
    }

    /// Every symbol of every enum our records carry, each name the schemas give it, in the
    /// current schemas' canonical forms.
    fn enum_symbols(name: &str) -> Vec<String> {
        fn walk(v: &serde_json::Value, name: &str, out: &mut Vec<String>) {
            match v {
                serde_json::Value::Object(o) => {
                    let named = o.get("name").and_then(|n| n.as_str()).is_some_and(|n| n.rsplit('.').next() == Some(name));
                    if o.get("type").and_then(|t| t.as_str()) == Some("enum") && named {
                        out.extend(o["symbols"].as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()));
                    }
                    o.values().for_each(|v| walk(v, name, out));
                }
                serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, name, out)),
                _ => {}
            }
        }
        let mut out = vec![];
        for rt in RecordType::ALL {
            walk(&serde_json::from_str(&Registry::global().current(rt).canonical).unwrap(), name, &mut out);
        }
        out.sort();
        out.dedup();
        assert!(!out.is_empty(), "no enum {name} in the schemas");
        out
    }

    /// The two libraries agree on every enum symbol, not only the ones the samples carry
    /// (serde_avro_fast finds a symbol by its name, as apache-avro does).
    #[test]
    fn every_enum_symbol_round_trips() {
        fn each<E: serde::de::DeserializeOwned>(name: &str, mut set: impl FnMut(E)) {
            for s in enum_symbols(name) {
                set(serde_json::from_value(serde_json::Value::String(s.clone())).unwrap_or_else(|e| panic!("{name}.{s}: {e}")));
            }
        }
        let audit = || {
            Emitter::new(Stage::Normaliser, crate::config::Topics::default()).audit(
                &crate::kafka::InMessage {
                    topic: "calls.raw".into(),
                    partition: 0,
                    offset: 1,
                    key: None,
                    payload: None,
                    timestamp_ms: None,
                    headers: vec![],
                    trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
                },
                &crate::emit::Subject { tenant_id: "acme", call_id: Some("c1"), crm: None, version: Some(1), kind: None },
                "normalise",
                AuditOutcome::Succeeded,
                "d".into(),
            )
        };
        each("Stage", |v| round_trips(&AuditRecord { stage: v, ..audit() }));
        each("AuditOutcome", |v| round_trips(&AuditRecord { outcome: v, ..audit() }));
        each("Crm", |v| round_trips(&AuditRecord { crm: Some(v), ..audit() }));
        each("ActivityKind", |v| round_trips(&AuditRecord { kind: Some(v), ..audit() }));
        each("CallOutcome", |v| round_trips(&CallEvent { outcome: Some(v), ..sample_call() }));
        each("CallDirection", |v| round_trips(&CallEvent { direction: v, ..sample_call() }));
        each("EmailDirection", |v| round_trips(&EmailEvent { direction: v, ..fixtures::raw_email("acme", "m1", 0) }));
        each("MeetingStatus", |v| round_trips(&MeetingEvent { status: v, ..fixtures::raw_meeting("acme", "e1", 0) }));
        each("LeadSourceType", |v| round_trips(&LeadEvent { source_type: v, ..fixtures::raw_lead("acme", "l1", 0) }));
        each("ConsentState", |v| round_trips(&LeadEvent { consent_to_processing: v, ..fixtures::raw_lead("acme", "l1", 0) }));
        each("AttendeeResponse", |v| {
            let mut m = fixtures::raw_meeting("acme", "e1", 0);
            m.attendees[0].response = v;
            round_trips(&m)
        });
        each("DlqReason", |v| {
            let [dl, _] = Emitter::new(Stage::Writer, crate::config::Topics::default()).dead_letter(
                &crate::kafka::InMessage {
                    topic: "crm.writes.zoho".into(),
                    partition: 0,
                    offset: 1,
                    key: Some(b"acme".to_vec()),
                    payload: Some(vec![1, 2, 3]),
                    timestamp_ms: None,
                    headers: vec![],
                    trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
                },
                &crate::emit::Subject { tenant_id: "acme", call_id: Some("c1"), crm: Some(Crm::Zoho), version: Some(1), kind: None },
                "write",
                v,
                "d".into(),
                "d".into(),
            );
            round_trips(&decode::<DeadLetter>(&dl.payload).unwrap());
        });
    }

    #[test]
    fn garbage_is_an_error_never_a_panic() {
        let good = encode(&sample_call()).unwrap();
        assert!(matches!(decode::<CallEvent>(&[]), Err(DecodeError::Empty)));
        assert!(matches!(decode::<CallEvent>(&[0xC3, 0x01, 1]), Err(DecodeError::Truncated(_))));
        assert!(matches!(decode::<CallEvent>(b"{\"json\":1}"), Err(DecodeError::UnknownFraming(_))));
        let mut unknown = good.clone();
        unknown[2] ^= 0xFF;
        assert!(matches!(decode::<CallEvent>(&unknown), Err(DecodeError::UnknownFingerprint(_))));
        assert!(matches!(decode::<NormalisedCall>(&good), Err(DecodeError::WrongRecord { .. })));
        assert!(matches!(decode::<CallEvent>(&[0, 0, 0, 0, 7, 1]), Err(DecodeError::UnknownConfluentId(7))));
        // Every truncation of a valid frame fails cleanly.
        for cut in 0..good.len() {
            assert!(decode::<CallEvent>(&good[..cut]).is_err(), "cut at {cut} decoded");
        }
        let mut long = good.clone();
        long.push(0);
        assert!(matches!(decode::<CallEvent>(&long), Err(DecodeError::TrailingBytes(1))));
        // Random bytes behind a valid header.
        let mut seed = 0x1234_5678u32;
        for _ in 0..2000 {
            let mut b = good[..10].to_vec();
            for _ in 0..(seed % 64) {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                b.push((seed >> 16) as u8);
            }
            let _ = decode::<CallEvent>(&b);
        }
    }

    /// An older writer (here: a CallEvent before `notes` and `attributes` existed) is
    /// read into the current schema with the defaults filled in.
    #[test]
    fn older_schema_versions_resolve_into_current() {
        let mut old: serde_json::Value = serde_json::from_str(include_str!("../../../schemas/call_event.avsc")).unwrap();
        let fields = old["fields"].as_array_mut().unwrap();
        fields.retain(|f| f["name"] != "notes" && f["name"] != "attributes");
        let old_text = old.to_string();
        let v0 = Versioned::parse(RecordType::CallEvent, "test/v0.avsc", &old_text).unwrap();
        let mut call = sample_call();
        call.notes = None;
        call.attributes.clear();
        #[derive(serde::Serialize)]
        struct V0<'a> {
            tenant_id: &'a str,
            call_id: &'a str,
            source: &'a str,
            version: i64,
            direction: CallDirection,
            from_number: &'a str,
            to_number: &'a str,
            region_hint: Option<&'a str>,
            started_at: i64,
            ended_at: Option<i64>,
            duration_s: Option<i32>,
            outcome: Option<CallOutcome>,
            agent_id: &'a str,
            agent_email: Option<&'a str>,
            recording_url: Option<&'a str>,
        }
        let datum = apache_avro::writer::datum::GenericDatumWriter::builder(&v0.schema)
            .build()
            .unwrap()
            .write_ser_to_vec(&V0 {
                tenant_id: &call.tenant_id,
                call_id: &call.call_id,
                source: &call.source,
                version: call.version,
                direction: call.direction,
                from_number: &call.from_number,
                to_number: &call.to_number,
                region_hint: call.region_hint.as_deref(),
                started_at: call.started_at,
                ended_at: call.ended_at,
                duration_s: call.duration_s,
                outcome: call.outcome,
                agent_id: &call.agent_id,
                agent_email: None,
                recording_url: call.recording_url.as_deref(),
            })
            .unwrap();
        // Through Confluent framing, where an arbitrary writer schema can be registered.
        let reg = ConfluentSchemas::default();
        reg.insert(42, v0);
        let mut framed = vec![0, 0, 0, 0, 42];
        framed.extend_from_slice(&datum);
        assert_eq!(decode_with::<CallEvent>(&framed, Some(&reg)).unwrap(), call);
    }

    #[test]
    fn confluent_ids_are_configured_by_fingerprint_and_hold_their_record() {
        let current = |r| fingerprint_hex(&Registry::global().current(r).fingerprint);
        let spec = format!("42={}, 43={}", current(RecordType::CallEvent), current(RecordType::EmailEvent).to_uppercase());
        let ids = ConfluentSchemas::from_config(&spec).unwrap();
        let call = crate::events::fixtures::raw_call("acme", "c1", 0);
        let single = encode(&call).unwrap();
        let mut framed = vec![0, 0, 0, 0, 42];
        framed.extend_from_slice(&single[10..]);
        assert_eq!(decode_with::<CallEvent>(&framed, Some(&ids)).unwrap(), call, "the datum after Confluent's 5 bytes");
        framed[4] = 43;
        assert!(
            matches!(decode_with::<CallEvent>(&framed, Some(&ids)), Err(DecodeError::WrongRecord { .. })),
            "an id registered for EmailEvent on a CallEvent topic is refused, not misread"
        );
        framed[4] = 44;
        assert!(matches!(decode_with::<CallEvent>(&framed, Some(&ids)), Err(DecodeError::UnknownConfluentId(44))));
        for bad in ["42", "x=00", "42=0000000000000000", &format!("1={0},1={0}", current(RecordType::CallEvent))] {
            assert!(ConfluentSchemas::from_config(bad).is_err(), "{bad}");
        }
        assert!(ConfluentSchemas::from_config("").is_ok());
    }
}
