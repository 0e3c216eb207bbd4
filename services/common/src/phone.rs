//! Phone numbers to E.164 (DESIGN §3). Upstream systems send numbers in every format people
//! and PBXs produce; CRMs hold whatever people typed. Both sides go through here so that
//! comparisons are between E.164 strings.

use phonenumber::{country, Mode};
use std::str::FromStr;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PhoneError {
    #[error("number is empty")]
    Empty,
    #[error("'{0}' is not an ISO 3166 alpha-2 region")]
    UnknownRegion(String),
    #[error("cannot parse the number: {0}")]
    Unparseable(String),
    #[error("the number is not a valid number for its country")]
    NotValid,
}

/// Parses an ISO 3166-1 alpha-2 code (any case) into the phonenumber crate's region id.
pub fn region(code: &str) -> Result<country::Id, PhoneError> {
    country::Id::from_str(&code.trim().to_ascii_uppercase()).map_err(|_| PhoneError::UnknownRegion(code.to_string()))
}

/// The E.164 form of `raw`, reading national formats in `default_region`.
pub fn to_e164(raw: &str, default_region: Option<country::Id>) -> Result<String, PhoneError> {
    let mut s = raw.trim();
    // RFC 3966 `tel:` URIs: the crate does not read them; parameters follow ';'.
    if let Some(rest) = s.strip_prefix("tel:").or_else(|| s.strip_prefix("TEL:")) {
        s = rest.split(';').next().unwrap_or("").trim();
    }
    if s.is_empty() {
        return Err(PhoneError::Empty);
    }
    // The crate strips a national prefix wrongly when given a region for a number that
    // already says its country code, so such input is parsed without one.
    let region = if s.starts_with('+') { None } else { default_region };
    match parse_valid(s, region) {
        Ok(e164) => Ok(e164),
        // The crate also mishandles numbers dialled with the region's international
        // prefix when the national number keeps a leading zero (00 39 02…, Italy):
        // libphonenumber reads them, so retry with the prefix turned into '+'.
        Err(first) => match region.and_then(|r| idd_to_plus(s, r)) {
            Some(plus) => parse_valid(&plus, None).map_err(|_| first),
            None => Err(first),
        },
    }
}

fn parse_valid(s: &str, region: Option<country::Id>) -> Result<String, PhoneError> {
    let parsed = std::panic::catch_unwind(|| phonenumber::parse(region, s))
        // A panic inside the parser on hostile input must not take the service down.
        .map_err(|_| PhoneError::Unparseable("parser failed on this input".into()))?
        .map_err(|e| PhoneError::Unparseable(e.to_string()))?;
    if !phonenumber::is_valid(&parsed) {
        return Err(PhoneError::NotValid);
    }
    Ok(parsed.format().mode(Mode::E164).to_string())
}

/// `s` with the region's international (IDD) prefix replaced by '+', if it starts with one.
fn idd_to_plus(s: &str, region: country::Id) -> Option<String> {
    let digits: String = s.chars().filter(char::is_ascii_digit).collect();
    let meta = phonenumber::metadata::DATABASE.by_id(region.as_ref())?;
    let idd = meta.international_prefix()?.find(&digits)?;
    (idd.start() == 0 && idd.end() < digits.len()).then(|| format!("+{}", &digits[idd.end()..]))
}

/// Remembers recent parses. Parsing costs ~15 µs (the crate's regexes) and the same numbers
/// recur constantly (an agent's line is on every call they make), so stages parse through
/// this. Bounded: when full it starts over, which costs one re-parse per number.
/// A raw number and the region it was read with.
type CacheKey = (String, Option<country::Id>);

pub struct E164Cache {
    map: std::sync::Mutex<std::collections::HashMap<CacheKey, Result<String, PhoneError>>>,
    capacity: usize,
}

impl E164Cache {
    pub fn new(capacity: usize) -> E164Cache {
        E164Cache { map: Default::default(), capacity }
    }

    pub fn to_e164(&self, raw: &str, region: Option<country::Id>) -> Result<String, PhoneError> {
        // The region only matters for numbers without '+'; keying on it anyway is simpler
        // and costs little.
        let key = (raw.to_string(), region);
        if let Some(hit) = self.map.lock().expect("lock").get(&key) {
            return hit.clone();
        }
        let result = to_e164(raw, region);
        let mut map = self.map.lock().expect("lock");
        if map.len() >= self.capacity {
            map.clear();
        }
        map.insert(key, result.clone());
        result
    }
}

/// The digits of an E.164 number's national number (`+14155552671` → `4155552671`): what
/// the CRMs' phone searches are given, since numbers are stored as people typed them (HubSpot
/// indexes these digits in `hs_searchable_calculated_*`; Salesforce's SOSL and Zoho's search
/// ignore punctuation and a missing country code). None when `e164` does not parse.
pub fn national_digits(e164: &str) -> Option<String> {
    phonenumber::parse(None, e164).ok().map(|n| n.national().value().to_string())
}

/// Masks a number for audit and logs: country code and last two digits stay, so support
/// staff can tell numbers apart without reading them.
/// `text` with every E.164 number in it (`+` and 7–15 digits) masked: for CRM request and
/// response excerpts in audit, which quote numbers the tenant may not allow there.
pub fn mask_in_text(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let mut copied = 0;
    while i < b.len() {
        if b[i] == b'+' {
            let end = b[i + 1..].iter().position(|c| !c.is_ascii_digit()).map_or(b.len(), |p| i + 1 + p);
            let n = end - i - 1;
            if (7..=15).contains(&n) {
                out.push_str(&text[copied..i]);
                out.push_str(&mask(&text[i..end]));
                copied = end;
            }
            i = end.max(i + 1);
        } else {
            i += 1;
        }
    }
    out.push_str(&text[copied..]);
    out
}

pub fn mask(number: &str) -> String {
    let digits: Vec<char> = number.chars().filter(|c| c.is_ascii_digit()).collect();
    if digits.len() <= 4 {
        return "*".repeat(digits.len());
    }
    let keep_head = if number.trim_start().starts_with('+') { 2.min(digits.len() - 4) } else { 0 };
    let mut out = String::new();
    if keep_head > 0 {
        out.push('+');
    }
    for (i, d) in digits.iter().enumerate() {
        if i < keep_head || i >= digits.len() - 2 {
            out.push(*d);
        } else {
            out.push('•');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn national_digits_drop_the_country_code() {
        assert_eq!(national_digits("+14155552671").as_deref(), Some("4155552671"));
        assert_eq!(national_digits("+442079460958").as_deref(), Some("2079460958"));
        assert_eq!(national_digits("not a number"), None);
    }

    #[test]
    fn numbers_inside_text_are_masked() {
        let t = r#"{"hs_call_from_number":"+14155552671","n":"+12","x":"a+442079460958b"}"#;
        let m = mask_in_text(t);
        assert!(!m.contains("4155552671") && !m.contains("2079460958"), "{m}");
        assert!(m.contains("\"+12\""), "short runs are not numbers: {m}");
        assert_eq!(mask_in_text("no numbers, +"), "no numbers, +");
    }

    /// Real-world spellings from 20 countries; expected values from Google's
    /// libphonenumber (Python port), built by scripts/phone_table.py.
    #[test]
    fn matches_libphonenumber_on_the_table() {
        let table = include_str!("../testdata/phone_numbers.tsv");
        let mut rows = 0;
        let mut countries = std::collections::HashSet::new();
        let mut failures = vec![];
        for line in table.lines().filter(|l| !l.starts_with('#')) {
            let cols: Vec<&str> = line.split('\t').collect();
            let (raw, reg, expected, note) = (cols[0], cols[1], cols[2], cols[3]);
            rows += 1;
            let region = region(reg).ok();
            let got = to_e164(raw, region).unwrap_or_else(|_| "INVALID".into());
            if got != expected {
                failures.push(format!("{note}: {raw:?} in {reg}: expected {expected}, got {got}"));
            }
            if expected != "INVALID" {
                countries.insert(expected[..3].to_string());
            }
        }
        assert!(rows >= 100, "table has only {rows} rows");
        assert!(countries.len() >= 10);
        assert!(failures.is_empty(), "{} of {rows} differ:\n{}", failures.len(), failures.join("\n"));
    }

    #[test]
    fn plus_numbers_ignore_a_wrong_region() {
        // With region DE the crate would strip the '0' after the country code.
        assert_eq!(to_e164("+44 20 7946 0958", Some(region("de").unwrap())).unwrap(), "+442079460958");
    }

    #[test]
    fn errors_say_why() {
        assert_eq!(to_e164("  ", None), Err(PhoneError::Empty));
        assert_eq!(to_e164("12345", Some(country::Id::US)), Err(PhoneError::NotValid));
        assert!(matches!(to_e164("020 7946 0958", None), Err(PhoneError::Unparseable(_))));
        assert!(matches!(region("XX"), Err(PhoneError::UnknownRegion(_))));
    }

    #[test]
    fn hostile_input_does_not_panic() {
        for s in ["+", "++++", "\u{0}", "+١٢٣٤٥٦٧٨٩", "tel:;;;", &"9".repeat(10_000), "+1\u{202e}555", "((((((("] {
            let _ = to_e164(s, Some(country::Id::US));
        }
    }

    #[test]
    fn cache_returns_what_parsing_returns() {
        let cache = E164Cache::new(2);
        for _ in 0..3 {
            for (raw, region) in [("020 7946 0958", country::Id::GB), ("12345", country::Id::US), ("+33 6 12 34 56 78", country::Id::US)] {
                assert_eq!(cache.to_e164(raw, Some(region)), to_e164(raw, Some(region)));
            }
        }
        assert!(cache.map.lock().unwrap().len() <= 2, "bounded");
    }

    #[test]
    fn mask_keeps_country_and_last_two() {
        assert_eq!(mask("+442079460958"), "+44••••••••58");
        assert_eq!(mask("020 7946 0958"), "•••••••••58");
        assert_eq!(mask("123"), "***");
    }
}
