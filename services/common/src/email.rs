//! Email addresses as crm-sync matches them against CRM contacts.
//!
//! The four CRMs compare a contact's email case-insensitively (HubSpot stores addresses
//! lower-cased; Salesforce's and Zoho's searches and Pipedrive's person search ignore case),
//! so the canonical form is the whole address lower-cased, not only the domain: two
//! spellings of one local part must meet the same contact, and a key built from an
//! address must not depend on how a mail client capitalised it. The domain goes to its
//! ASCII form (UTS 46: IDN labels to punycode), the form the CRMs store and search
//! (`jane@bücher.example` and `jane@xn--bcher-kva.example` are one contact).
//!
//! What is refused, with the reason, rather than guessed at: a value with no address in it,
//! two addresses where one is expected, a quoted or non-ASCII local part (the CRMs' email
//! fields refuse them: modelled as the harsher case, see the README), a domain literal
//! (`[192.0.2.1]`), a domain without a dot, a label that is not letters, digits and inner
//! hyphens, and lengths past RFC 5321's (64 for the local part, 254 in all).
//!
//! Splitting display names and lists off a captured header value is RFC 5322 parsing,
//! done by `mailparse`; this module owns only the rules above.

use crate::events::EmailAddress;
use std::fmt;

/// Why a captured value is not an address crm-sync can match on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddressError {
    /// Nothing but space, or an empty group.
    Empty,
    /// Not parseable as RFC 5322 address(es).
    Unparseable(String),
    /// Several addresses where one is expected.
    Several(usize),
    /// No '@', or an empty side of it.
    NoAt,
    Local(&'static str),
    Domain(String),
    TooLong(usize),
}

impl fmt::Display for AddressError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            AddressError::Empty => write!(f, "holds no address"),
            AddressError::Unparseable(e) => write!(f, "is not an RFC 5322 address: {e}"),
            AddressError::Several(n) => write!(f, "holds {n} addresses where one is expected"),
            AddressError::NoAt => write!(f, "is not local@domain"),
            AddressError::Local(why) => write!(f, "has a local part that {why}"),
            AddressError::Domain(why) => write!(f, "has a domain that {why}"),
            AddressError::TooLong(n) => write!(f, "is {n} characters long; the limit is 254"),
        }
    }
}

/// RFC 5322 `atext`, the characters of a dot-atom besides the dots.
fn atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c)
}

/// The canonical form of one bare address (`local@domain`, no display name).
pub fn canonical(addr: &str) -> Result<String, AddressError> {
    let addr = addr.trim();
    if addr.is_empty() {
        return Err(AddressError::Empty);
    }
    let (local, domain) = addr.rsplit_once('@').ok_or(AddressError::NoAt)?;
    if local.is_empty() || domain.is_empty() {
        return Err(AddressError::NoAt);
    }
    if local.starts_with('"') {
        return Err(AddressError::Local("is quoted"));
    }
    if !local.is_ascii() {
        return Err(AddressError::Local("is not ASCII"));
    }
    if local.len() > 64 {
        return Err(AddressError::Local("is longer than 64 characters"));
    }
    if !local.chars().all(|c| c == '.' || atext(c)) {
        return Err(AddressError::Local("holds a character outside RFC 5322's atext"));
    }
    if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
        return Err(AddressError::Local("starts or ends with a dot, or has two in a row"));
    }
    let domain = canonical_domain(domain)?;
    let out = format!("{}@{domain}", local.to_ascii_lowercase());
    if out.len() > 254 {
        return Err(AddressError::TooLong(out.len()));
    }
    Ok(out)
}

fn canonical_domain(domain: &str) -> Result<String, AddressError> {
    if domain.starts_with('[') {
        return Err(AddressError::Domain("is an address literal".into()));
    }
    // A trailing dot is the root: the same domain.
    let domain = domain.strip_suffix('.').unwrap_or(domain);
    let ascii = idna::domain_to_ascii(domain).map_err(|e| AddressError::Domain(format!("is not a valid IDN ({e})")))?;
    let labels: Vec<&str> = ascii.split('.').collect();
    if labels.len() < 2 {
        return Err(AddressError::Domain("has no dot".into()));
    }
    for l in &labels {
        if l.is_empty() || l.len() > 63 {
            return Err(AddressError::Domain(format!("has a label of {} characters (1 to 63)", l.len())));
        }
        if !l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') || l.starts_with('-') || l.ends_with('-') {
            return Err(AddressError::Domain(format!("has the label {l:?}, not letters, digits and inner hyphens")));
        }
    }
    if labels.last().is_some_and(|tld| tld.chars().all(|c| c.is_ascii_digit())) {
        return Err(AddressError::Domain("ends in a numeric label".into()));
    }
    Ok(ascii)
}

/// Every address in one captured value: a bare address, `Name <addr>`, a comma-separated
/// list of them, or a group (`team: a@x, b@y;`, flattened). An empty group is no address
/// (`undisclosed-recipients:;`); any bad address refuses the whole value.
pub fn parse_list(raw: &str) -> Result<Vec<EmailAddress>, AddressError> {
    if raw.trim().is_empty() {
        return Err(AddressError::Empty);
    }
    let parsed = mailparse::addrparse(raw).map_err(|e| AddressError::Unparseable(e.to_string()))?;
    let mut out = vec![];
    for a in parsed.iter() {
        let singles = match a {
            mailparse::MailAddr::Single(s) => std::slice::from_ref(s),
            mailparse::MailAddr::Group(g) => g.addrs.as_slice(),
        };
        for s in singles {
            let name = s.display_name.as_deref().map(str::trim).filter(|n| !n.is_empty()).map(str::to_string);
            out.push(EmailAddress { email: canonical(&s.addr)?, name, raw: raw.to_string() });
        }
    }
    Ok(out)
}

/// Exactly one address in a captured value.
pub fn parse_one(raw: &str) -> Result<EmailAddress, AddressError> {
    let mut all = parse_list(raw)?;
    match all.len() {
        0 => Err(AddressError::Empty),
        1 => Ok(all.remove(0)),
        n => Err(AddressError::Several(n)),
    }
}

/// A Message-ID (or In-Reply-To) as a key: trimmed, without its angle brackets.
pub fn bare_message_id(raw: &str) -> &str {
    let t = raw.trim();
    t.strip_prefix('<').and_then(|t| t.strip_suffix('>')).unwrap_or(t).trim()
}

/// A value that is not an address, masked to its shape for people reading a dead letter:
/// letters and digits after the first become `•`, punctuation stays (so "no @" or "two @"
/// still shows): `jane-at-customer.example` → `j•••-••-••••••••.•••••••`.
pub fn mask_shape(raw: &str) -> String {
    let mut first = true;
    raw.chars()
        .map(|c| {
            if c.is_alphanumeric() {
                if std::mem::take(&mut first) {
                    c
                } else {
                    '•'
                }
            } else {
                c
            }
        })
        .collect()
}

/// `text` with every email address's local part masked ("jane.doe@customer.example" is
/// "j•••@customer.example"), for audit records: who wrote to whom stays out of the audit
/// topic, as phone numbers do; the domain stays, for support. An address is a run of
/// local-part characters, '@', and a domain with a dot.
pub fn mask_in_text(text: &str) -> String {
    let b = text.as_bytes();
    let local = |c: u8| c.is_ascii_alphanumeric() || b"._%+-'".contains(&c);
    let domain = |c: u8| c.is_ascii_alphanumeric() || c == b'.' || c == b'-';
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    for (at, _) in text.match_indices('@') {
        if at < copied {
            continue;
        }
        let start = (copied..at).rev().take_while(|&k| local(b[k])).last().unwrap_or(at);
        let end = (at + 1..b.len()).find(|&k| !domain(b[k])).unwrap_or(b.len());
        let dom = &text[at + 1..end];
        if start == at || !dom.trim_end_matches('.').contains('.') {
            continue;
        }
        out.push_str(&text[copied..start]);
        out.push(char::from(b[start]));
        out.push_str("•••");
        copied = at;
    }
    out.push_str(&text[copied..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_value_is_masked_to_its_shape() {
        assert_eq!(mask_shape("jane-at-customer.example"), "j•••-••-••••••••.•••••••");
        assert_eq!(mask_shape("a@@b"), "a@@•");
        assert_eq!(mask_shape(""), "");
    }

    #[test]
    fn canonical_addresses_as_the_crms_compare_them() {
        for (raw, want) in [
            ("jane@example.com", "jane@example.com"),
            ("  Jane.Doe@Example.COM ", "jane.doe@example.com"),
            ("JANE+crm@sub.Example.co.uk", "jane+crm@sub.example.co.uk"),
            ("jane@bücher.example", "jane@xn--bcher-kva.example"),
            ("jane@BÜCHER.example", "jane@xn--bcher-kva.example"),
            ("jane@xn--bcher-kva.example", "jane@xn--bcher-kva.example"),
            ("o'brien@example.ie", "o'brien@example.ie"),
            ("jane@example.com.", "jane@example.com"),
        ] {
            assert_eq!(canonical(raw).as_deref(), Ok(want), "{raw}");
        }
    }

    #[test]
    fn what_is_not_an_address_says_why() {
        for (raw, want) in [
            ("", AddressError::Empty),
            ("jane", AddressError::NoAt),
            ("@example.com", AddressError::NoAt),
            ("jane@", AddressError::NoAt),
            ("\"jane doe\"@example.com", AddressError::Local("is quoted")),
            ("jäne@example.com", AddressError::Local("is not ASCII")),
            ("jane..doe@example.com", AddressError::Local("starts or ends with a dot, or has two in a row")),
            ("jane(doe)@example.com", AddressError::Local("holds a character outside RFC 5322's atext")),
        ] {
            assert_eq!(canonical(raw), Err(want), "{raw}");
        }
        for raw in ["jane@localhost", "jane@[192.0.2.1]", "jane@exa_mple.com", "jane@-example.com", "jane@example.123", "jane@ex..com"] {
            assert!(matches!(canonical(raw), Err(AddressError::Domain(_))), "{raw}: {:?}", canonical(raw));
        }
        let long = format!("{}@example.com", "a".repeat(65));
        assert_eq!(canonical(&long), Err(AddressError::Local("is longer than 64 characters")));
        let long_domain = format!("jane@{}.com", vec!["a".repeat(60); 5].join("."));
        assert!(matches!(canonical(&long_domain), Err(AddressError::TooLong(_))));
    }

    #[test]
    fn display_names_lists_and_groups_are_split_off() {
        let one = parse_one("\"Doe, Jane\" <Jane.Doe@Customer.Example>").unwrap();
        assert_eq!(one.email, "jane.doe@customer.example");
        assert_eq!(one.name.as_deref(), Some("Doe, Jane"));
        assert_eq!(one.raw, "\"Doe, Jane\" <Jane.Doe@Customer.Example>");
        assert_eq!(parse_one("Rep One <rep@acme.example>").unwrap().name.as_deref(), Some("Rep One"));
        assert_eq!(parse_one("rep@acme.example").unwrap().name, None);

        let list = parse_list("a@x.example, B <b@y.example>").unwrap();
        assert_eq!(list.iter().map(|a| a.email.as_str()).collect::<Vec<_>>(), ["a@x.example", "b@y.example"]);
        let group = parse_list("team: a@x.example, b@y.example;").unwrap();
        assert_eq!(group.len(), 2);
        assert_eq!(parse_list("undisclosed-recipients:;").unwrap(), vec![]);

        assert_eq!(parse_one("a@x.example, b@y.example"), Err(AddressError::Several(2)));
        assert_eq!(parse_one("undisclosed-recipients:;"), Err(AddressError::Empty));
        assert_eq!(parse_list("  "), Err(AddressError::Empty));
        assert!(parse_list("Jane <not-an-address>").is_err());
        assert!(parse_list("a@x.example, broken").is_err(), "one bad address refuses the value");
    }

    #[test]
    fn message_ids_lose_their_brackets() {
        assert_eq!(bare_message_id(" <CAF1x=abc@mail.gmail.com> "), "CAF1x=abc@mail.gmail.com");
        assert_eq!(bare_message_id("abc@host"), "abc@host");
        assert_eq!(bare_message_id("<abc@host"), "<abc@host");
    }

    #[test]
    fn addresses_in_text_are_masked_to_their_first_letter_and_domain() {
        let t = r#"{"from":{"email":"rep@acme.example"},"to":[{"email":"jane.doe@customer.example","firstName":"Jane"}]}"#;
        assert_eq!(
            mask_in_text(t),
            r#"{"from":{"email":"r•••@acme.example"},"to":[{"email":"j•••@customer.example","firstName":"Jane"}]}"#
        );
        assert_eq!(mask_in_text("values: [a@x.example, b.c@y.example]"), "values: [a•••@x.example, b•••@y.example]");
        assert_eq!(mask_in_text("no address @ here, user@localhost, 3 @ 4"), "no address @ here, user@localhost, 3 @ 4");
        assert_eq!(mask_in_text("Ünïcode ok: ü jane@x.example"), "Ünïcode ok: ü j•••@x.example");
    }
}
