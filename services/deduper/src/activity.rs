//! The kinds the deduper carries (calls, emails, meetings, leads), behind one face: what it
//! marks in Redis, what it audits, and the write request it sends each CRM.

use crm_common::codec;
use crm_common::config::Topics;
use crm_common::events::{
    activity_key, ActivityKind, ActivityWriteRequest, Crm, CrmWriteRequestHead, CrmWriteRequestTail, NormalisedCall, NormalisedCallView,
    NormalisedEmail, NormalisedLead, NormalisedMeeting, CALL_IN_WRITE_REQUEST,
};
use crm_common::kafka::InMessage;

/// An activity as read from its input message, which it may borrow from.
pub enum Activity<'a> {
    /// A call written with the current schema, as the normaliser writes it: read in place
    /// and passed on to each CRM as written. Decoding it into owned strings and encoding it
    /// again per CRM took a fifth of the deduper's CPU.
    Call {
        view: NormalisedCallView<'a>,
        datum: &'a [u8],
    },
    /// A call written with an older schema (a topic holding messages from before an
    /// upgrade): read into the current schema, and its current datum encoded once
    /// ([`Activity::upgraded`]) for every CRM's request.
    UpgradedCall {
        call: NormalisedCall,
        datum: Vec<u8>,
    },
    Email(NormalisedEmail),
    Meeting(NormalisedMeeting),
    Lead(NormalisedLead),
}

impl<'a> Activity<'a> {
    /// Decodes `input` as the record its topic carries; Err names what was expected.
    pub fn decode(input: &'a InMessage, topics: &Topics) -> Result<Activity<'a>, String> {
        let bytes = input.payload.as_deref().unwrap_or_default();
        let (what, decoded) = match topics.normalised_kind(&input.topic) {
            Some(ActivityKind::Email) => ("a NormalisedEmail", codec::decode(bytes).map(Activity::Email)),
            Some(ActivityKind::Meeting) => ("a NormalisedMeeting", codec::decode(bytes).map(Activity::Meeting)),
            Some(ActivityKind::Lead) => ("a NormalisedLead", codec::decode(bytes).map(Activity::Lead)),
            _ => (
                "a NormalisedCall",
                match codec::current_datum::<NormalisedCall>(bytes) {
                    Some(datum) => codec::decode_view::<NormalisedCall, _>(datum).map(|view| Activity::Call { view, datum }),
                    None => codec::decode(bytes).map(Activity::upgraded),
                },
            ),
        };
        decoded.map_err(|e| format!("{} message is not {what}: {e}", input.topic))
    }

    /// A call decoded from an older schema, with its datum in the current one.
    pub fn upgraded(call: NormalisedCall) -> Activity<'static> {
        let framed = codec::encode(&call).expect("NormalisedCall always encodes");
        let datum = codec::current_datum::<NormalisedCall>(&framed).expect("encoded with the current schema").to_vec();
        Activity::UpgradedCall { call, datum }
    }

    pub fn kind(&self) -> ActivityKind {
        match self {
            Activity::Call { .. } | Activity::UpgradedCall { .. } => ActivityKind::Call,
            Activity::Email(_) => ActivityKind::Email,
            Activity::Meeting(_) => ActivityKind::Meeting,
            Activity::Lead(_) => ActivityKind::Lead,
        }
    }

    pub fn tenant_id(&self) -> &str {
        match self {
            Activity::Call { view, .. } => view.tenant_id,
            Activity::UpgradedCall { call: c, .. } => &c.tenant_id,
            Activity::Email(e) => &e.tenant_id,
            Activity::Meeting(m) => &m.tenant_id,
            Activity::Lead(l) => &l.tenant_id,
        }
    }

    /// The source's id: call_id, Message-ID, the meeting's source_id, the lead's lead_id.
    pub fn source_id(&self) -> &str {
        match self {
            Activity::Call { view, .. } => view.call_id,
            Activity::UpgradedCall { call: c, .. } => &c.call_id,
            Activity::Email(e) => &e.message_id,
            Activity::Meeting(m) => &m.source_id,
            Activity::Lead(l) => &l.lead_id,
        }
    }

    pub fn version(&self) -> i64 {
        match self {
            Activity::Call { view, .. } => view.version,
            Activity::UpgradedCall { call: c, .. } => c.version,
            Activity::Email(e) => e.version,
            Activity::Meeting(m) => m.version,
            Activity::Lead(l) => l.version,
        }
    }

    /// The producing system, which picks the dedup window.
    pub fn source(&self) -> &str {
        match self {
            Activity::Call { view, .. } => view.source,
            Activity::UpgradedCall { call: c, .. } => &c.source,
            Activity::Email(e) => &e.source,
            Activity::Meeting(m) => &m.source,
            Activity::Lead(l) => &l.source,
        }
    }

    /// What the Redis mark is named by, under the tenant. Calls keep their call id (marks
    /// already in Redis stay valid across the upgrade); the other kinds name their kind, so
    /// an email's Message-ID never meets a call id.
    pub fn mark_id(&self) -> String {
        match self {
            Activity::Call { .. } | Activity::UpgradedCall { .. } => self.source_id().to_string(),
            other => format!("{}:{}", other.kind().as_str(), other.source_id()),
        }
    }

    pub fn key(&self, crm: Crm) -> String {
        activity_key(self.tenant_id(), self.kind(), self.source_id(), crm)
    }

    /// The write request for `crm` under `key` (its [`Activity::key`], which the caller has
    /// already built for the audit record), encoded: a CrmWriteRequest for a call (as before),
    /// an ActivityWriteRequest for an email, a meeting or a lead.
    pub fn request(&self, crm: Crm, key: &str, requested_at: i64, trace_id: &str) -> Vec<u8> {
        let call: &[u8] = match self {
            Activity::Call { datum, .. } => datum,
            Activity::UpgradedCall { datum, .. } => datum,
            other => return other.activity_request(crm, key, requested_at, trace_id),
        };
        let head = CrmWriteRequestHead {
            tenant_id: self.tenant_id(),
            call_id: self.source_id(),
            crm,
            idempotency_key: key,
            version: self.version(),
        };
        let tail = CrmWriteRequestTail { requested_at, trace_id };
        codec::encode_around(&CALL_IN_WRITE_REQUEST, &head, call, &tail).expect("CrmWriteRequest always encodes")
    }

    /// An email's, meeting's or lead's ActivityWriteRequest.
    fn activity_request(&self, crm: Crm, key: &str, requested_at: i64, trace_id: &str) -> Vec<u8> {
        codec::encode(&ActivityWriteRequest {
            tenant_id: self.tenant_id().to_string(),
            kind: self.kind(),
            source_id: self.source_id().to_string(),
            crm,
            idempotency_key: key.to_string(),
            version: self.version(),
            email: match self {
                Activity::Email(e) => Some(e.clone()),
                _ => None,
            },
            meeting: match self {
                Activity::Meeting(m) => Some(m.clone()),
                _ => None,
            },
            lead: match self {
                Activity::Lead(l) => Some(l.clone()),
                _ => None,
            },
            requested_at,
            trace_id: trace_id.to_string(),
        })
        .expect("ActivityWriteRequest always encodes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crm_common::events::{fixtures, CrmWriteRequest};

    fn message(payload: Vec<u8>) -> InMessage {
        InMessage {
            topic: "calls.normalised".into(),
            partition: 0,
            offset: 7,
            key: Some(b"acme".to_vec()),
            payload: Some(payload),
            timestamp_ms: None,
            headers: vec![],
            trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
        }
    }

    /// A call written with an older schema (none is shipped yet: NormalisedCall is at its
    /// first version) is decoded into the current one; its write request is the one a
    /// current message of the same call gets, read in place.
    #[test]
    fn a_call_read_in_place_and_a_decoded_one_make_the_same_write_request() {
        let mut call = fixtures::normalised_call("acme", "c:1", 4);
        call.notes = Some("café".into());
        call.attributes.insert("queue".into(), "sales".into());
        let msg = message(codec::encode(&call).unwrap());
        let read = Activity::decode(&msg, &Topics::default()).unwrap();
        assert!(matches!(read, Activity::Call { .. }), "the current schema is read in place");
        let decoded = Activity::upgraded(call.clone());
        for a in [&read, &decoded] {
            assert_eq!((a.tenant_id(), a.source_id(), a.version(), a.source(), a.mark_id()), ("acme", "c:1", 4, "pbx", "c:1".to_string()));
        }
        let key = read.key(Crm::Hubspot);
        let bytes = read.request(Crm::Hubspot, &key, 99, "t");
        assert_eq!(decoded.request(Crm::Hubspot, &key, 99, "t"), bytes);
        let req: CrmWriteRequest = codec::decode(&bytes).unwrap();
        assert_eq!((req.call, req.idempotency_key.as_str(), req.requested_at), (call, "acme:c:1:hubspot", 99));
    }

    #[test]
    fn a_call_that_does_not_decode_says_what_was_expected() {
        let mut bytes = codec::encode(&fixtures::normalised_call("acme", "c:1", 1)).unwrap();
        bytes.truncate(bytes.len() - 3);
        let err = Activity::decode(&message(bytes), &Topics::default()).err().expect("cut short");
        assert!(err.starts_with("calls.normalised message is not a NormalisedCall: "), "{err}");
    }
}
