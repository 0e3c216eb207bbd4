//! Property-based fuzzing (proptest) of what reads untrusted input first: the Avro decoders
//! and the phone normaliser. Seeded from the corpus in tests/corpus/ (hostile frames and
//! numbers, kept in the repo) and from real encodings of every record type, then mutated.
//! A decoder may refuse anything, but never panic, never accept trailing garbage, and what
//! it accepts must encode back to the same record. `proptest-regressions/` keeps any
//! failing case found, and proptest re-runs it first.

use crm_common::codec::{self, DecodeError};
use crm_common::events::fixtures::{normalised_call, raw_call};
use crm_common::events::*;
use crm_common::fingerprint::fingerprint_hex;
use crm_common::phone;
use crm_common::schemas::{RecordType, Registry};
use proptest::prelude::*;

fn corpus(name: &str) -> Vec<String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus").join(name);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(String::from)
        .collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2).map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex")).collect()
}

fn record_type(name: &str) -> RecordType {
    RecordType::ALL.into_iter().find(|rt| format!("{rt:?}") == name).unwrap_or_else(|| panic!("unknown record {name}"))
}

/// Decodes `bytes` as `rt`; if it decodes, it must encode back to a record that decodes
/// equal (compared through their Debug form, which every record type has).
fn decode_as(rt: RecordType, bytes: &[u8]) -> Result<(), DecodeError> {
    fn check<T: AvroRecord + std::fmt::Debug>(bytes: &[u8]) -> Result<(), DecodeError> {
        let v: T = codec::decode(bytes)?;
        let again: T = codec::decode(&codec::encode(&v).expect("a decoded record encodes")).expect("its encoding decodes");
        assert_eq!(format!("{v:?}"), format!("{again:?}"), "decode ∘ encode is the identity");
        Ok(())
    }
    match rt {
        RecordType::CallEvent => check::<CallEvent>(bytes),
        RecordType::EmailEvent => check::<EmailEvent>(bytes),
        RecordType::MeetingEvent => check::<MeetingEvent>(bytes),
        RecordType::LeadEvent => check::<LeadEvent>(bytes),
        RecordType::NormalisedCall => check::<NormalisedCall>(bytes),
        RecordType::NormalisedEmail => check::<NormalisedEmail>(bytes),
        RecordType::NormalisedMeeting => check::<NormalisedMeeting>(bytes),
        RecordType::NormalisedLead => check::<NormalisedLead>(bytes),
        RecordType::CrmWriteRequest => check::<CrmWriteRequest>(bytes),
        RecordType::ActivityWriteRequest => check::<ActivityWriteRequest>(bytes),
        RecordType::AuditRecord => check::<AuditRecord>(bytes),
        RecordType::DeadLetter => check::<DeadLetter>(bytes),
    }
}

/// The corpus's frames, with `{fp}` filled in, plus a real encoding of each record type.
fn avro_seeds() -> Vec<(RecordType, Vec<u8>)> {
    let mut seeds: Vec<(RecordType, Vec<u8>)> = corpus("avro.txt")
        .iter()
        .map(|line| {
            let (name, hex) = line.split_once(' ').unwrap_or((line.as_str(), ""));
            let rt = record_type(name);
            let fp = fingerprint_hex(&Registry::global().current(rt).fingerprint);
            (rt, unhex(&hex.trim().replace("{fp}", &fp)))
        })
        .collect();
    let req = CrmWriteRequest {
        tenant_id: "acme".into(),
        call_id: "c1".into(),
        crm: Crm::Hubspot,
        idempotency_key: idempotency_key("acme", "c1", Crm::Hubspot),
        version: 2,
        call: normalised_call("acme", "c1", 2),
        requested_at: 1,
        trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
    };
    seeds.push((RecordType::CallEvent, codec::encode(&raw_call("acme", "c1", 3)).unwrap()));
    seeds.push((RecordType::NormalisedCall, codec::encode(&normalised_call("acme", "c1", 2)).unwrap()));
    seeds.push((RecordType::CrmWriteRequest, codec::encode(&req).unwrap()));
    for req in [
        fixtures::email_request("acme", "m1", Crm::Hubspot),
        fixtures::meeting_request("acme", "e1", Crm::Zoho),
        fixtures::lead_request("acme", "l1", Crm::Salesforce),
    ] {
        seeds.push((RecordType::ActivityWriteRequest, codec::encode(&req).unwrap()));
    }
    seeds.push((RecordType::EmailEvent, codec::encode(&fixtures::raw_email("acme", "m1", 1)).unwrap()));
    seeds.push((RecordType::MeetingEvent, codec::encode(&fixtures::raw_meeting("acme", "e1", 1)).unwrap()));
    seeds.push((RecordType::LeadEvent, codec::encode(&fixtures::raw_lead("acme", "l1", 1)).unwrap()));
    seeds
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Truncate(usize),
    Insert(usize, Vec<u8>),
    Set(usize, u8),
}

fn mutate(mut b: Vec<u8>, ms: &[Mutation]) -> Vec<u8> {
    for m in ms {
        let n = b.len().max(1);
        match m {
            Mutation::Flip(i, bit) if !b.is_empty() => b[i % n] ^= 1 << (bit % 8),
            Mutation::Truncate(i) => b.truncate(i % n),
            Mutation::Insert(i, bytes) => {
                let at = (i % n).min(b.len());
                b.splice(at..at, bytes.iter().copied());
            }
            Mutation::Set(i, v) if !b.is_empty() => b[i % n] = *v,
            _ => {}
        }
    }
    b
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..12)).prop_map(|(i, v)| Mutation::Insert(i, v)),
        (any::<usize>(), prop_oneof![Just(0xffu8), Just(0x80), Just(0x7f), Just(0x00), Just(0x01)]).prop_map(|(i, v)| Mutation::Set(i, v)),
    ]
}

#[test]
fn every_corpus_frame_is_refused_or_read_without_panicking() {
    for (rt, bytes) in avro_seeds() {
        let _ = decode_as(rt, &bytes);
    }
    // The hostile lengths are refused as data errors, not read.
    let fp = fingerprint_hex(&Registry::global().current(RecordType::CallEvent).fingerprint);
    let huge = unhex(&format!("c301{fp}feffffffffffffffff7f"));
    assert!(matches!(codec::decode::<CallEvent>(&huge), Err(DecodeError::Datum { .. })));
    // 400 MB is under apache-avro's own 512 MiB default. The current schema's reader takes
    // strings from the message itself: a length longer than what is left is refused unread.
    let mut claim = vec![0x08];
    claim.extend_from_slice(b"acme");
    claim.extend_from_slice(&[0x80, 0x90, 0xbc, 0xfd, 0x02]); // zigzag varint of 400_000_000
    let err = codec::decode::<CallEvent>(&unhex(&format!("c301{fp}{}", claim.iter().map(|b| format!("{b:02x}")).collect::<String>())))
        .unwrap_err();
    assert!(err.to_string().contains("end of slice"), "refused as longer than the message: {err}");
    // An older writer schema is resolved by apache-avro, where only our cap refuses it unread.
    let mut old: serde_json::Value = serde_json::from_str(include_str!("../../../schemas/call_event.avsc")).unwrap();
    old["fields"].as_array_mut().unwrap().retain(|f| f["name"] != "notes" && f["name"] != "attributes");
    let registry = codec::ConfluentSchemas::default();
    registry.insert(7, crm_common::schemas::Versioned::parse(RecordType::CallEvent, "old.avsc", &old.to_string()).unwrap());
    let mut framed = vec![0, 0, 0, 0, 7];
    framed.extend_from_slice(&claim);
    let err = codec::decode_with::<CallEvent>(&framed, Some(&registry)).unwrap_err();
    assert!(err.to_string().contains("allocate"), "refused by the allocation cap: {err}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic_a_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..512), which in 0usize..5) {
        let _ = decode_as(RecordType::ALL[which], &bytes);
    }

    #[test]
    fn arbitrary_datums_behind_a_real_fingerprint_never_panic(datum in proptest::collection::vec(any::<u8>(), 0..512), which in 0usize..5) {
        let rt = RecordType::ALL[which];
        let mut bytes = vec![0xC3, 0x01];
        bytes.extend_from_slice(&Registry::global().current(rt).fingerprint);
        bytes.extend(datum);
        let _ = decode_as(rt, &bytes);
    }

    #[test]
    fn mutated_seeds_never_panic_a_decoder(seed in any::<prop::sample::Index>(), ms in proptest::collection::vec(mutation(), 1..8)) {
        let seeds = avro_seeds();
        let (rt, bytes) = &seeds[seed.index(seeds.len())];
        let _ = decode_as(*rt, &mutate(bytes.clone(), &ms));
    }

    #[test]
    fn any_call_event_round_trips(
        tenant in "\\PC{0,40}", call in "\\PC{0,80}", from in "\\PC{0,30}", notes in proptest::option::of("\\PC{0,200}"),
        started in any::<i64>(), duration in proptest::option::of(any::<i32>()),
    ) {
        let mut ev = raw_call("t", "c", 0);
        ev.tenant_id = tenant;
        ev.call_id = call;
        ev.from_number = from;
        ev.notes = notes;
        ev.started_at = started;
        ev.duration_s = duration;
        let back: CallEvent = codec::decode(&codec::encode(&ev).unwrap()).unwrap();
        prop_assert_eq!(format!("{back:?}"), format!("{ev:?}"));
    }
}

fn phone_seeds() -> Vec<(Option<String>, String)> {
    corpus("phone.txt")
        .iter()
        .map(|l| {
            let (region, raw) = l.split_once(' ').unwrap_or(("-", l));
            ((region != "-").then(|| region.to_string()), raw.replace("\\u0000", "\0"))
        })
        .collect()
}

/// What holds of any answer: an E.164 number is '+' and 8–15 digits, and normalising it
/// again gives itself (whatever region it is read in).
fn check_e164(raw: &str, region: Option<&str>) {
    let r = region.and_then(|c| phone::region(c).ok());
    if let Ok(e) = phone::to_e164(raw, r) {
        assert!(e.starts_with('+') && e[1..].bytes().all(|b| b.is_ascii_digit()), "{raw:?} → {e:?}");
        assert!((8..=16).contains(&e.len()), "{raw:?} → {e:?}");
        assert_eq!(phone::to_e164(&e, None).as_deref(), Ok(e.as_str()), "{raw:?}: E.164 is a fixed point");
        assert_eq!(phone::to_e164(&e, r).as_deref(), Ok(e.as_str()), "{raw:?}: the region does not change a +number");
        assert!(!phone::mask(&e).contains(&e[1..]), "masking hides the number");
    }
}

#[test]
fn every_phone_seed_normalises_or_is_refused() {
    for (region, raw) in phone_seeds() {
        check_e164(&raw, region.as_deref());
    }
    assert_eq!(phone::to_e164("(415) 555-2671", Some(phone::region("US").unwrap())).unwrap(), "+14155552671");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn any_text_normalises_or_is_refused(raw in "\\PC{0,40}", region in prop::sample::select(vec!["US", "GB", "DE", "FR", "IT", "IN", "BR", "JP", "ZZ"])) {
        check_e164(&raw, Some(region));
    }

    #[test]
    fn dialled_looking_text_normalises_or_is_refused(raw in "(tel:)?[+]?[0-9 ()./-]{0,24}(;ext=[0-9]{0,6})?", region in prop::sample::select(vec!["US", "GB", "DE", "FR", "IT", "IN", "BR", "JP"])) {
        check_e164(&raw, Some(region));
    }

    #[test]
    fn mutated_phone_seeds_normalise_or_are_refused(seed in any::<prop::sample::Index>(), ms in proptest::collection::vec(mutation(), 1..6)) {
        let seeds = phone_seeds();
        let (region, raw) = &seeds[seed.index(seeds.len())];
        let bytes = mutate(raw.clone().into_bytes(), &ms);
        check_e164(&String::from_utf8_lossy(&bytes), region.as_deref());
    }

    #[test]
    fn masking_any_text_keeps_its_shape_and_leaves_no_number(text in "([^+]{0,10}[+][0-9]{0,18}){0,4}\\PC{0,20}") {
        let masked = phone::mask_in_text(&text);
        prop_assert_eq!(masked.chars().count(), text.chars().count(), "one character for one");
        let b = masked.as_bytes();
        for (i, _) in masked.match_indices('+') {
            let run = b[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
            prop_assert!(!(7..=15).contains(&run), "an E.164 number left readable in {masked:?}");
        }
    }
}
