//! Phone numbers to E.164 (DESIGN §3). Upstream systems send numbers in every format people
//! and PBXs produce; CRMs hold whatever people typed. Both sides go through here so that
//! comparisons are between E.164 strings.

use phonenumber::country;
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

/// Compiled patterns the phonenumber crate keeps. It keeps them in one LRU of 100 for all
/// regions; five regions' validation patterns overflow that, and every parse then compiled
/// some of them again (tens of µs each). Patterns are compiled only when a number of their
/// region is parsed, so this bounds memory by the regions in use.
pub const PATTERN_CACHE: usize = 2048;

fn pattern_cache_sized() {
    static SIZED: std::sync::Once = std::sync::Once::new();
    SIZED.call_once(|| {
        if let Ok(mut cache) = phonenumber::metadata::DATABASE.cache().lock() {
            cache.set_capacity(PATTERN_CACHE);
        }
    });
}

/// The E.164 form of `raw`, reading national formats in `default_region`.
pub fn to_e164(raw: &str, default_region: Option<country::Id>) -> Result<String, PhoneError> {
    pattern_cache_sized();
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
    let parse = |s: &str, region| {
        std::panic::catch_unwind(|| phonenumber::parse(region, s))
            // A panic inside the parser on hostile input must not take the service down.
            .map_err(|_| PhoneError::Unparseable("parser failed on this input".into()))?
            .map_err(|e| PhoneError::Unparseable(e.to_string()))
    };
    let mut parsed = parse(s, region)?;
    // The crate took the region's own country code off the front of a nationally written
    // number; libphonenumber's rule is narrower, and where it keeps the number national so
    // do we.
    if let Some(r) = region.filter(|_| parsed.code().source() == country::Source::Number) {
        if let Some(plus) = country_code_kept(s, r, parsed.extension().map(|e| e.as_ref())) {
            parsed = parse(&plus, None)?;
        }
    }
    if !valid::is_valid(&parsed) {
        return Err(PhoneError::NotValid);
    }
    // The crate's E.164 formatter first looks up the region's display formats (regexes
    // under its lock) that E.164 never uses; a valid number's country code is known.
    Ok(format!("+{}{}", parsed.code().value(), parsed.national()))
}

/// The phonenumber crate's `is_valid`, over patterns compiled once per region. The crate
/// looks every pattern up by its source text in one process-wide LRU under a mutex (hashing
/// the whole pattern each time), which was most of a parse's cost and kept parses on all
/// cores in single file. The rules are the crate's own (`validator::is_valid_with` and
/// `number_type`), so a number is valid here exactly when the crate says so; a unit test
/// holds the two side by side.
mod valid {
    use phonenumber::metadata::{Descriptor, Metadata, DATABASE};
    use phonenumber::PhoneNumber;
    use std::collections::HashMap;
    use std::sync::{Arc, RwLock};

    /// A descriptor's lengths and national-number pattern, compiled.
    struct Desc {
        lengths: Vec<u16>,
        pattern: regex::Regex,
    }

    impl Desc {
        fn new(d: &Descriptor) -> Desc {
            // Metadata patterns always compile; one that did not would match nothing.
            let pattern = at_start(d.national_number().as_str()).unwrap_or_else(|_| regex::Regex::new("$^").expect("literal"));
            Desc { lengths: d.possible_length().to_vec(), pattern }
        }

        /// The crate's `Descriptor::is_match`: a possible length, and a match at the start.
        fn is_match(&self, national: &str) -> bool {
            (self.lengths.is_empty() || self.lengths.contains(&(national.len() as u16))) && self.pattern.is_match(national)
        }
    }

    /// `source` compiled to match only at the start of the text. The crate asks whether the
    /// leftmost match starts at 0 (`find`, then `start() == 0`); a match starts at 0 exactly
    /// when the leftmost one does, so the anchored `is_match` gives the same answer without
    /// searching the rest of the text and then back for the match's start (a third of a
    /// new number's parse went there).
    fn at_start(source: &str) -> Result<regex::Regex, regex::Error> {
        // The metadata's XML layout whitespace is dropped, as the crate's own build does
        // (`ignore_whitespace`); the line break ends any comment the source might hold.
        regex::RegexBuilder::new(&format!("^(?:{source}\n)")).ignore_whitespace(true).build()
    }

    /// What decides whether a national number is valid in one region.
    struct Rules {
        general: Desc,
        /// Every typed descriptor `number_type` tries: a match of any is a known type.
        types: Vec<Desc>,
        leading_digits: Option<regex::Regex>,
    }

    impl Rules {
        fn new(meta: &Metadata) -> Rules {
            let d = meta.descriptors();
            let typed = [
                d.premium_rate(),
                d.toll_free(),
                d.shared_cost(),
                d.voip(),
                d.personal_number(),
                d.pager(),
                d.uan(),
                d.voicemail(),
                d.fixed_line(),
                d.mobile(),
            ];
            let leading_digits = meta.leading_digits().and_then(|r| at_start(r.as_str()).ok());
            Rules { general: Desc::new(d.general()), types: typed.into_iter().flatten().map(Desc::new).collect(), leading_digits }
        }

        /// The crate's `number_type(..) != Type::Unknown`.
        fn known_type(&self, national: &str) -> bool {
            self.general.is_match(national) && self.types.iter().any(|d| d.is_match(national))
        }
    }

    /// The rules of `meta`, compiled on first use. Keyed by the metadata's address: it lives
    /// in the crate's static database for the life of the process, and non-geographic
    /// entities share the id "001".
    fn rules(meta: &'static Metadata) -> Arc<Rules> {
        static RULES: std::sync::OnceLock<RwLock<HashMap<usize, Arc<Rules>>>> = std::sync::OnceLock::new();
        let key = std::ptr::from_ref(meta) as usize;
        let all = RULES.get_or_init(Default::default);
        if let Some(r) = all.read().expect("lock").get(&key) {
            return r.clone();
        }
        all.write().expect("lock").entry(key).or_insert_with(|| Arc::new(Rules::new(meta))).clone()
    }

    /// The crate's `is_valid`: the region the number belongs to (for a shared country code,
    /// the first whose leading digits start the number, or else whose types know it), then
    /// whether its national number is of a known type there.
    pub fn is_valid(number: &PhoneNumber) -> bool {
        let code = number.country().code();
        let national = number.national().to_string();
        let Some(regions) = DATABASE.region(&code) else { return false };
        let meta = match regions.as_slice() {
            ["001"] => DATABASE.by_code(&code).and_then(|m| m.into_iter().next()),
            [only] => DATABASE.by_id(*only),
            several => several.iter().filter_map(|id| DATABASE.by_id(*id)).find(|meta| {
                let r = rules(meta);
                match &r.leading_digits {
                    Some(leading) => leading.is_match(&national),
                    None => r.known_type(&national),
                }
            }),
        };
        meta.is_some_and(|meta| rules(meta).known_type(&national))
    }
}

/// libphonenumber's `maybeExtractCountryCode` for a number written without '+' whose digits
/// start with the region's country code: the code is taken off only when the rest (after
/// any national prefix) matches the region's general national-number pattern and the whole
/// does not, or when the whole is too long for the region. Otherwise the digits are the
/// national number, and so is read here: `+<code><national>`, its national prefix
/// stripped as libphonenumber's `parseHelper` does. None when the crate's reading stands
/// (the code is to be stripped, or the input is not plain digits this can reason about).
fn country_code_kept(s: &str, region: country::Id, extension: Option<&str>) -> Option<String> {
    let meta = phonenumber::metadata::DATABASE.by_id(region.as_ref())?;
    let code = meta.country_code().to_string();
    // Letters (vanity numbers) and other scripts' digits: the crate's conversion is not
    // repeated here.
    if s.chars().any(|c| c.is_alphabetic() && extension.is_none() || c.is_numeric() && !c.is_ascii_digit()) {
        return None;
    }
    let mut full: String = s.chars().filter(char::is_ascii_digit).collect();
    if let Some(ext) = extension {
        full.truncate(full.strip_suffix(ext)?.len());
    }
    let rest = full.strip_prefix(&code)?;
    let general = meta.descriptors().general();
    let pattern = general.national_number().as_str();
    let strip = (!full_match(pattern, &full) && full_match(pattern, &strip_national_prefix(meta, rest)))
        || length(general, &full) == Length::TooLong;
    if strip {
        return None;
    }
    let national = strip_national_prefix(meta, &full);
    let national =
        if matches!(length(general, &national), Length::TooShort | Length::LocalOnly | Length::Invalid) { full } else { national };
    Some(format!("+{code}{national}"))
}

/// libphonenumber's `maybeStripNationalPrefixAndCarrierCode`: `number` without the
/// region's national prefix (or transformed by its rule), unless that would turn a number
/// matching the region's general pattern into one that does not.
fn strip_national_prefix(meta: &phonenumber::Metadata, number: &str) -> String {
    // Without a pattern of its own a region's national prefix is read literally.
    let parsing = match (meta.national_prefix_for_parsing(), meta.national_prefix()) {
        (Some(re), _) => re.as_str().to_string(),
        (None, Some(prefix)) if !prefix.is_empty() => regex::escape(prefix),
        _ => return number.to_string(),
    };
    let prefix = anchored(&format!("^(?:{})", compact(&parsing)));
    let Some(caps) = prefix.captures(number) else {
        return number.to_string();
    };
    let general = meta.descriptors().general().national_number().as_str();
    let viable = full_match(general, number);
    let whole = caps.get(0).expect("group 0");
    let last_group = caps.get(caps.len() - 1).filter(|_| caps.len() > 1);
    let candidate = match (meta.national_prefix_transform_rule(), last_group) {
        (Some(rule), Some(_)) if !rule.is_empty() => {
            let mut out = String::new();
            caps.expand(&java_replacement(rule), &mut out);
            out.push_str(&number[whole.end()..]);
            out
        }
        _ => number[whole.end()..].to_string(),
    };
    if viable && !full_match(general, &candidate) {
        number.to_string()
    } else {
        candidate
    }
}

/// Java's `$1` group references as the regex crate's `${1}` (its `$15` would be group 15).
fn java_replacement(rule: &str) -> String {
    let mut out = String::with_capacity(rule.len() + 4);
    let mut chars = rule.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, chars.peek()) {
            ('$', Some(d)) if d.is_ascii_digit() => {
                out.push_str(&format!("${{{d}}}"));
                chars.next();
            }
            _ => out.push(c),
        }
    }
    out
}

/// Whether `pattern` matches all of `value`, as libphonenumber's `matchNationalNumber`.
fn full_match(pattern: &str, value: &str) -> bool {
    anchored(&format!("^(?:{})$", compact(pattern))).is_match(value)
}

/// A metadata pattern without the layout whitespace of its XML source, as libphonenumber's
/// build strips it.
fn compact(pattern: &str) -> String {
    pattern.split_whitespace().collect()
}

/// The compiled pattern, kept: metadata patterns are few and parses are many.
fn anchored(pattern: &str) -> std::sync::Arc<regex::Regex> {
    static CACHE: std::sync::OnceLock<std::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<regex::Regex>>>> =
        std::sync::OnceLock::new();
    let mut cache = CACHE.get_or_init(Default::default).lock().expect("lock");
    if let Some(re) = cache.get(pattern) {
        return re.clone();
    }
    // Metadata patterns always compile; one that did not would match nothing.
    let re = std::sync::Arc::new(regex::Regex::new(pattern).unwrap_or_else(|_| regex::Regex::new("$^").expect("literal")));
    cache.insert(pattern.to_string(), re.clone());
    re
}

/// libphonenumber's `testNumberLength` for an unknown type, as far as these rules ask.
#[derive(Debug, PartialEq)]
enum Length {
    Possible,
    LocalOnly,
    TooShort,
    TooLong,
    Invalid,
}

fn length(general: &phonenumber::metadata::Descriptor, number: &str) -> Length {
    let n = number.len() as u16;
    let possible = general.possible_length();
    let (Some(&min), Some(&max)) = (possible.first(), possible.last()) else {
        return Length::Invalid;
    };
    if general.possible_local_length().contains(&n) {
        Length::LocalOnly
    } else if n < min {
        Length::TooShort
    } else if n > max {
        Length::TooLong
    } else if possible.contains(&n) {
        Length::Possible
    } else {
        Length::Invalid
    }
}

/// `s` with the region's international (IDD) prefix replaced by '+', if it starts with one.
fn idd_to_plus(s: &str, region: country::Id) -> Option<String> {
    let digits: String = s.chars().filter(char::is_ascii_digit).collect();
    let meta = phonenumber::metadata::DATABASE.by_id(region.as_ref())?;
    let idd = meta.international_prefix()?.find(&digits)?;
    (idd.start() == 0 && idd.end() < digits.len()).then(|| format!("+{}", &digits[idd.end()..]))
}

/// Remembers recent parses. Parsing costs 2–4 µs (`bench steps`; most of it the crate's own
/// parse, the rest its validation patterns) against 0.06 µs for a hit, and the same numbers
/// recur constantly (an agent's line is on every call they make), so stages parse through
/// this. Bounded: when full it starts over, which costs one re-parse per number. Keyed by
/// region, then by the raw number, so a hit allocates nothing but its answer.
pub struct E164Cache {
    map: std::sync::Mutex<Parses>,
    capacity: usize,
}

#[derive(Default)]
struct Parses {
    by_region: std::collections::HashMap<Option<country::Id>, std::collections::HashMap<String, Result<String, PhoneError>>>,
    len: usize,
}

impl E164Cache {
    pub fn new(capacity: usize) -> E164Cache {
        E164Cache { map: Default::default(), capacity }
    }

    pub fn to_e164(&self, raw: &str, region: Option<country::Id>) -> Result<String, PhoneError> {
        // The region only matters for numbers without '+'; keying on it anyway is simpler
        // and costs little.
        if let Some(hit) = self.map.lock().expect("lock").by_region.get(&region).and_then(|m| m.get(raw)) {
            return hit.clone();
        }
        let result = to_e164(raw, region);
        let mut map = self.map.lock().expect("lock");
        if map.len >= self.capacity {
            *map = Parses::default();
        }
        if map.by_region.entry(region).or_default().insert(raw.to_string(), result.clone()).is_none() {
            map.len += 1;
        }
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

/// Masks a number for audit and logs: country code and last two digits stay, so support
/// staff can tell numbers apart without reading them. Called for every call's audit record,
/// so it sizes its string once and keeps no copy of the digits.
pub fn mask(number: &str) -> String {
    let count = number.bytes().filter(u8::is_ascii_digit).count();
    if count <= 4 {
        return "*".repeat(count);
    }
    let keep_head = if number.trim_start().starts_with('+') { 2.min(count - 4) } else { 0 };
    let mut out = String::with_capacity(1 + count * '•'.len_utf8());
    if keep_head > 0 {
        out.push('+');
    }
    for (i, d) in number.chars().filter(char::is_ascii_digit).enumerate() {
        out.push(if i < keep_head || i >= count - 2 { d } else { '•' });
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

    /// The crate alone read "495662759" in DE as +49 5662759, a different (valid) number;
    /// libphonenumber keeps it national because the whole matches Germany's pattern.
    #[test]
    fn a_national_number_starting_with_the_country_code_stays_national() {
        let de = Some(country::Id::DE);
        assert_eq!(to_e164("495662759", de).unwrap(), "+49495662759");
        assert_eq!(to_e164("0495662759", de).unwrap(), "+49495662759");
        // Too long for Germany with the code, so the code is taken off.
        assert_eq!(to_e164("49919263368284", de).unwrap(), "+49919263368284");
        assert_eq!(to_e164("1-415-555-2671", Some(country::Id::US)).unwrap(), "+14155552671");
        assert_eq!(to_e164("338684865", Some(country::Id::FR)).unwrap(), "+33338684865");
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
        assert!(cache.map.lock().unwrap().len <= 2, "bounded");
    }

    /// The compiled validator and E.164 formatting against the crate's own, on the table's
    /// numbers, every region's example numbers of every type, and those numbers cut short,
    /// made longer and with a digit changed.
    #[test]
    fn compiled_validation_agrees_with_the_crate() {
        use phonenumber::metadata::DATABASE;
        let mut inputs: Vec<(String, Option<country::Id>)> = vec![];
        for line in include_str!("../testdata/phone_numbers.tsv").lines().filter(|l| !l.starts_with('#')) {
            let cols: Vec<&str> = line.split('\t').collect();
            inputs.push((cols[0].to_string(), region(cols[1]).ok()));
        }
        for meta in DATABASE.iter() {
            let d = meta.descriptors();
            let examples = [d.general(), d.fixed_line().unwrap_or(d.general()), d.mobile().unwrap_or(d.general())]
                .into_iter()
                .chain(
                    [d.toll_free(), d.premium_rate(), d.shared_cost(), d.voip(), d.personal_number(), d.pager(), d.uan(), d.voicemail()]
                        .into_iter()
                        .flatten(),
                )
                .filter_map(|d| d.example());
            for ex in examples {
                let whole = format!("+{}{ex}", meta.country_code());
                let mut changed = whole.clone().into_bytes();
                let last = changed.len() - 1;
                changed[last] = if changed[last] == b'9' { b'0' } else { changed[last] + 1 };
                for n in [whole.clone(), whole[..whole.len() - 1].to_string(), format!("{whole}7"), String::from_utf8(changed).unwrap()] {
                    inputs.push((n, None));
                }
            }
        }
        assert!(inputs.len() > 2_000, "{} inputs", inputs.len());
        let (mut differ, mut said) = (vec![], [0, 0]);
        for (raw, region) in &inputs {
            let Ok(parsed) = phonenumber::parse(*region, raw) else { continue };
            let crate_says = phonenumber::is_valid(&parsed);
            said[crate_says as usize] += 1;
            if valid::is_valid(&parsed) != crate_says {
                differ.push(format!("{raw:?} in {region:?}: the crate says {crate_says}"));
            }
            if crate_says {
                let ours = format!("+{}{}", parsed.code().value(), parsed.national());
                assert_eq!(ours, parsed.format().mode(phonenumber::Mode::E164).to_string(), "{raw}");
            }
        }
        assert!(differ.is_empty(), "{} differ:\n{}", differ.len(), differ.join("\n"));
        assert!(said[0] > 500 && said[1] > 500, "invalid and valid numbers both tried: {said:?}");
    }

    #[test]
    fn mask_keeps_country_and_last_two() {
        assert_eq!(mask("+442079460958"), "+44••••••••58");
        assert_eq!(mask("020 7946 0958"), "•••••••••58");
        assert_eq!(mask("123"), "***");
    }
}
