//! SOQL (`/query`, `/queryAll`) and SOSL (`/search`), the subsets an integration uses:
//! `SELECT f, ... FROM Obj [WHERE cond {AND|OR} ... ] [ORDER BY f [ASC|DESC]] [LIMIT n]` with
//! `= != < <= > >= LIKE IN NOT IN`, parentheses and NOT; and
//! `FIND {term} [IN ALL|NAME|EMAIL|PHONE FIELDS] RETURNING Obj(f, ...)[, ...] [LIMIT n]`.
//! SOQL `=` on text ignores case; SOSL phone search compares digits, so punctuation does not
//! matter, and it matches when one number's digits end with the other's (a country code
//! present on one side only); it does not see records until the index catches up.

use super::errors;
use super::sobjects::{canonical_field, check_object, check_query_object, check_version, render};
use crate::gate::json;
use crate::sql::{compare, eval, lex, Parser, Tok};
use crate::state::{digits, Caller, FieldType, Record, SharedSim};
use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::Extension;
use serde_json::{json, Value};
use std::collections::HashMap;

fn run_soql(sim: &SharedSim, caller: &Caller, version: &str, q: &str, all: bool) -> Response {
    let toks = match lex(q) {
        Ok(t) => t,
        Err(e) => return errors::error(400, "MALFORMED_QUERY", &e, &[]),
    };
    let mut p = Parser { t: toks, i: 0 };
    let parsed = (|| -> Result<_, String> {
        if !p.kw("SELECT") {
            return Err("expected SELECT".into());
        }
        let mut fields = vec![p.word()?];
        while p.peek() == Some(&Tok::Comma) {
            p.i += 1;
            fields.push(p.word()?);
        }
        if !p.kw("FROM") {
            return Err("expected FROM".into());
        }
        let object = p.word()?;
        let cond = if p.kw("WHERE") { Some(p.expr()?) } else { None };
        let mut order = None;
        if p.kw("ORDER") {
            if !p.kw("BY") {
                return Err("expected BY".into());
            }
            let f = p.word()?;
            let desc = p.kw("DESC");
            let _ = p.kw("ASC");
            order = Some((f, desc));
        }
        let mut limit = None;
        if p.kw("LIMIT") {
            match p.bump() {
                Some(Tok::Num(n)) if n >= 0.0 => limit = Some(n as usize),
                other => return Err(format!("bad LIMIT {other:?}")),
            }
        }
        if let Some(t) = p.peek() {
            return Err(format!("unexpected token: {t:?}"));
        }
        Ok((fields, object, cond, order, limit))
    })();
    let (fields, object, cond, order, limit) = match parsed {
        Ok(x) => x,
        Err(e) => return errors::error(400, "MALFORMED_QUERY", &e, &[]),
    };
    let object = match check_query_object(&object) {
        Ok(o) => o,
        Err(_) => return errors::error(400, "INVALID_TYPE", &format!("sObject type '{object}' is not supported."), &[]),
    };
    sim.with(caller, |acct, _| {
        for f in &fields {
            if canonical_field(acct, object, f).is_none() {
                return errors::error(400, "INVALID_FIELD", &format!("No such column '{f}' on entity '{object}'"), &[]);
            }
        }
        let mut hits: Vec<Record> = vec![];
        for r in acct.objects.get(object).into_iter().flat_map(|t| t.iter()) {
            if !all && !r.live() {
                continue;
            }
            let resolve = |f: &str| canonical_field(acct, object, f).ok_or_else(|| format!("No such column '{f}' on entity '{object}'"));
            match cond.as_ref().map(|c| eval(c, r, &resolve)).unwrap_or(Ok(true)) {
                Ok(true) => hits.push(r.clone()),
                Ok(false) => {}
                Err(e) => return errors::error(400, "INVALID_FIELD", &e, &[]),
            }
        }
        if let Some((f, desc)) = &order {
            let name = canonical_field(acct, object, f).unwrap_or_default();
            hits.sort_by(|a, b| {
                let o = compare(a.fields.get(&name).unwrap_or(&Value::Null), b.fields.get(&name).unwrap_or(&Value::Null))
                    .unwrap_or(std::cmp::Ordering::Equal);
                if *desc {
                    o.reverse()
                } else {
                    o
                }
            });
        }
        if let Some(l) = limit {
            hits.truncate(l);
        }
        let records: Vec<Value> = hits.iter().map(|r| render(r, object, version, Some(&fields), acct)).collect();
        json(200, json!({"totalSize": records.len(), "done": true, "records": records}))
    })
}

pub async fn query(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Path(version): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Err(r) = check_version(&version) {
        return r;
    }
    let soql = q.get("q").map(String::as_str).unwrap_or("");
    if let Some(r) = sim.with(&caller, |acct, _| super::setup::query(acct, soql)) {
        return r;
    }
    run_soql(&sim, &caller, &version, soql, false)
}

pub async fn query_all(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Path(version): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Err(r) = check_version(&version) {
        return r;
    }
    run_soql(&sim, &caller, &version, q.get("q").map(String::as_str).unwrap_or(""), true)
}

/// Phone search: digits against digits; one may carry a country code the other lacks.
pub fn phone_matches(stored: &str, term_digits: &str) -> bool {
    let s = digits(stored);
    if s.is_empty() || term_digits.is_empty() {
        return false;
    }
    let (short, long) = if s.len() <= term_digits.len() { (s.as_str(), term_digits) } else { (term_digits, s.as_str()) };
    s == term_digits || (short.len() >= 8 && long.ends_with(short) && long.len() - short.len() <= 3)
}

const SOSL_SPECIAL: &str = "&|!(){}[]^\"~*?:\\'+-";

/// The term inside `FIND {...}`, with backslash escapes removed.
fn sosl_term(q: &str) -> Result<(String, &str), String> {
    let rest = q.trim_start();
    let rest = rest.strip_prefix("FIND").or_else(|| rest.strip_prefix("find")).ok_or("expected FIND")?.trim_start();
    let body = rest.strip_prefix('{').ok_or("search term must be in braces")?;
    let mut term = String::new();
    let mut chars = body.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => {
                if let Some((_, n)) = chars.next() {
                    term.push(n);
                }
            }
            '}' => return Ok((term, &body[i + 1..])),
            c if SOSL_SPECIAL.contains(c) && c != '-' && c != '+' => {
                return Err(format!("unescaped reserved character '{c}' in the search term"))
            }
            c => term.push(c),
        }
    }
    Err("unterminated search term".into())
}

pub async fn search(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Path(version): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Err(r) = check_version(&version) {
        return r;
    }
    let q = q.get("q").cloned().unwrap_or_default();
    let (term, rest) = match sosl_term(&q) {
        Ok(x) => x,
        Err(e) => return errors::error(400, "MALFORMED_SEARCH", &e, &[]),
    };
    if term.trim().chars().count() < 2 {
        return errors::error(400, "MALFORMED_SEARCH", "search term must be longer than one character", &[]);
    }
    let toks = match lex(rest) {
        Ok(t) => t,
        Err(e) => return errors::error(400, "MALFORMED_SEARCH", &e, &[]),
    };
    let mut p = Parser { t: toks, i: 0 };
    let mut group = "ALL".to_string();
    if p.kw("IN") {
        group = p.word().unwrap_or_default().to_uppercase();
        if !p.kw("FIELDS") {
            return errors::error(400, "MALFORMED_SEARCH", "expected FIELDS", &[]);
        }
    }
    let mut returning: Vec<(String, Option<Vec<String>>)> = vec![];
    if p.kw("RETURNING") {
        loop {
            let Ok(obj) = p.word() else { return errors::error(400, "MALFORMED_SEARCH", "expected an object name", &[]) };
            let mut fields = None;
            if p.peek() == Some(&Tok::LParen) {
                p.i += 1;
                let mut fs = vec![];
                while let Some(Tok::Word(w)) = p.peek().cloned() {
                    fs.push(w);
                    p.i += 1;
                    if p.peek() == Some(&Tok::Comma) {
                        p.i += 1;
                    }
                }
                if p.bump() != Some(Tok::RParen) {
                    return errors::error(400, "MALFORMED_SEARCH", "expected ')'", &[]);
                }
                fields = Some(fs);
            }
            returning.push((obj, fields));
            if p.peek() == Some(&Tok::Comma) {
                p.i += 1;
            } else {
                break;
            }
        }
    } else {
        returning = vec![("Contact".into(), None), ("Lead".into(), None)];
    }
    let limit = if p.kw("LIMIT") {
        match p.bump() {
            Some(Tok::Num(n)) => (n as usize).min(2000),
            _ => 2000,
        }
    } else {
        2000
    };
    let term_digits = digits(&term);
    let needle = term.to_lowercase();
    sim.with(&caller, |acct, now| {
        let mut out = vec![];
        for (obj, fields) in &returning {
            let object = match check_object(obj) {
                Ok(o) => o,
                Err(_) => return errors::error(400, "INVALID_TYPE", &format!("sObject type '{obj}' is not supported."), &[]),
            };
            let schema = acct.schema_of(object);
            let wanted = fields.clone().unwrap_or_else(|| vec!["Id".into()]);
            for r in acct.objects.get(object).into_iter().flat_map(|t| t.live()) {
                if r.indexed_at_ms > now {
                    continue;
                }
                let hit = schema.iter().any(|(name, def)| {
                    let Some(v) = r.fields.get(name).and_then(Value::as_str) else { return false };
                    match group.as_str() {
                        "PHONE" => def.kind == FieldType::Phone && phone_matches(v, &term_digits),
                        "EMAIL" => name == "Email" && v.to_lowercase().contains(&needle),
                        "NAME" => name == "Name" && v.to_lowercase().split_whitespace().any(|w| needle.split_whitespace().any(|n| n == w)),
                        _ => {
                            (def.kind == FieldType::Phone && phone_matches(v, &term_digits))
                                || v.to_lowercase().split_whitespace().any(|w| w == needle)
                        }
                    }
                });
                if hit && out.len() < limit {
                    out.push(render(r, object, &version, Some(&wanted), acct));
                }
            }
        }
        json(200, json!({"searchRecords": out}))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phone_matching_ignores_punctuation_and_a_missing_country_code() {
        assert!(phone_matches("(415) 555-1212", "4155551212"));
        assert!(phone_matches("+1 415 555 1212", "4155551212"));
        assert!(phone_matches("415.555.1212", "14155551212"));
        assert!(!phone_matches("(415) 555-1213", "4155551212"));
        assert!(!phone_matches("555-1212", "4155551212"), "a bare local number is not the same number");
        assert!(!phone_matches("415-555-1212 ext 12", "4155551212"), "an extension changes the digits");
    }

    #[test]
    fn sosl_term_unescapes_and_rejects_reserved() {
        assert_eq!(sosl_term("FIND {\\+1 \\(415\\) 555\\-1212} IN PHONE FIELDS").unwrap().0, "+1 (415) 555-1212");
        assert!(sosl_term("FIND {a:b}").is_err());
    }
}
