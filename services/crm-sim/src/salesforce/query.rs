//! SOQL (`/query`, `/queryAll`) and SOSL (`/search`), the subsets an integration uses:
//! `SELECT f, ... FROM Obj [WHERE cond {AND|OR} ... ] [ORDER BY f [ASC|DESC]] [LIMIT n]` with
//! `= != < <= > >= LIKE IN NOT IN`, parentheses and NOT; and
//! `FIND {term} [IN ALL|NAME|EMAIL|PHONE FIELDS] RETURNING Obj(f, ...)[, ...] [LIMIT n]`.
//! SOQL `=` on text ignores case; SOSL phone search compares digits, so punctuation does not
//! matter, and it matches when one number's digits end with the other's (a country code
//! present on one side only); it does not see records until the index catches up.

use super::errors;
use super::sobjects::{canonical_field, check_object, check_version, render};
use crate::gate::json;
use crate::state::{digits, Account, Caller, FieldType, Record, SharedSim};
use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::Extension;
use serde_json::{json, Value};
use std::collections::HashMap;

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    Str(String),
    Num(f64),
    Op(String),
    LParen,
    RParen,
    Comma,
}

fn lex(q: &str) -> Result<Vec<Tok>, String> {
    let mut out = vec![];
    let cs: Vec<char> = q.chars().collect();
    let mut i = 0;
    while i < cs.len() {
        let c = cs[i];
        match c {
            c if c.is_whitespace() => i += 1,
            '(' => {
                out.push(Tok::LParen);
                i += 1
            }
            ')' => {
                out.push(Tok::RParen);
                i += 1
            }
            ',' => {
                out.push(Tok::Comma);
                i += 1
            }
            '\'' => {
                let mut s = String::new();
                i += 1;
                loop {
                    match cs.get(i) {
                        None => return Err("unterminated string literal".into()),
                        Some('\\') => {
                            s.push(*cs.get(i + 1).ok_or("dangling escape")?);
                            i += 2;
                        }
                        Some('\'') => {
                            i += 1;
                            break;
                        }
                        Some(&ch) => {
                            s.push(ch);
                            i += 1;
                        }
                    }
                }
                out.push(Tok::Str(s));
            }
            '=' | '!' | '<' | '>' => {
                let two: String = cs[i..(i + 2).min(cs.len())].iter().collect();
                if ["!=", "<=", ">=", "<>"].contains(&two.as_str()) {
                    out.push(Tok::Op(if two == "<>" { "!=".into() } else { two }));
                    i += 2;
                } else {
                    out.push(Tok::Op(c.to_string()));
                    i += 1;
                }
            }
            c if c.is_ascii_digit() || (c == '-' && cs.get(i + 1).is_some_and(char::is_ascii_digit)) => {
                let start = i;
                i += 1;
                while i < cs.len() && (cs[i].is_ascii_alphanumeric() || ":.-+".contains(cs[i])) {
                    i += 1;
                }
                let text: String = cs[start..i].iter().collect();
                match text.parse::<f64>() {
                    Ok(n) => out.push(Tok::Num(n)),
                    Err(_) => out.push(Tok::Str(text)), // a date or datetime literal
                }
            }
            c if c.is_alphanumeric() || c == '_' => {
                let start = i;
                while i < cs.len() && (cs[i].is_alphanumeric() || cs[i] == '_' || cs[i] == '.') {
                    i += 1;
                }
                out.push(Tok::Word(cs[start..i].iter().collect()));
            }
            other => return Err(format!("unexpected token: '{other}'")),
        }
    }
    Ok(out)
}

#[derive(Debug)]
enum Cond {
    And(Box<Cond>, Box<Cond>),
    Or(Box<Cond>, Box<Cond>),
    Not(Box<Cond>),
    Cmp(String, String, Value),
    In(String, bool, Vec<Value>),
}

struct Parser {
    t: Vec<Tok>,
    i: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.t.get(self.i)
    }
    fn next(&mut self) -> Option<Tok> {
        let t = self.t.get(self.i).cloned();
        self.i += 1;
        t
    }
    fn kw(&mut self, k: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Word(w)) if w.eq_ignore_ascii_case(k)) {
            self.i += 1;
            true
        } else {
            false
        }
    }
    fn word(&mut self) -> Result<String, String> {
        match self.next() {
            Some(Tok::Word(w)) => Ok(w),
            other => Err(format!("expected a name, found {other:?}")),
        }
    }
    fn value(&mut self) -> Result<Value, String> {
        match self.next() {
            Some(Tok::Str(s)) => Ok(json!(s)),
            Some(Tok::Num(n)) => Ok(json!(n)),
            Some(Tok::Word(w)) if w.eq_ignore_ascii_case("null") => Ok(Value::Null),
            Some(Tok::Word(w)) if w.eq_ignore_ascii_case("true") => Ok(json!(true)),
            Some(Tok::Word(w)) if w.eq_ignore_ascii_case("false") => Ok(json!(false)),
            other => Err(format!("expected a value, found {other:?}")),
        }
    }
    fn expr(&mut self) -> Result<Cond, String> {
        let mut left = self.term()?;
        while self.kw("OR") {
            left = Cond::Or(Box::new(left), Box::new(self.term()?));
        }
        Ok(left)
    }
    fn term(&mut self) -> Result<Cond, String> {
        let mut left = self.factor()?;
        while self.kw("AND") {
            left = Cond::And(Box::new(left), Box::new(self.factor()?));
        }
        Ok(left)
    }
    fn factor(&mut self) -> Result<Cond, String> {
        if self.kw("NOT") {
            return Ok(Cond::Not(Box::new(self.factor()?)));
        }
        if self.peek() == Some(&Tok::LParen) {
            self.i += 1;
            let e = self.expr()?;
            if self.next() != Some(Tok::RParen) {
                return Err("expected ')'".into());
            }
            return Ok(e);
        }
        let field = self.word()?;
        let negate = self.kw("NOT");
        if self.kw("IN") {
            if self.next() != Some(Tok::LParen) {
                return Err("expected '(' after IN".into());
            }
            let mut vals = vec![self.value()?];
            while self.peek() == Some(&Tok::Comma) {
                self.i += 1;
                vals.push(self.value()?);
            }
            if self.next() != Some(Tok::RParen) {
                return Err("expected ')'".into());
            }
            return Ok(Cond::In(field, negate, vals));
        }
        if negate {
            return Err("NOT must be followed by IN here".into());
        }
        if self.kw("LIKE") {
            return Ok(Cond::Cmp(field, "LIKE".into(), self.value()?));
        }
        match self.next() {
            Some(Tok::Op(op)) => Ok(Cond::Cmp(field, op, self.value()?)),
            other => Err(format!("unexpected token: {other:?}")),
        }
    }
}

fn like(hay: &str, pat: &str) -> bool {
    let (h, p) = (hay.to_lowercase(), pat.to_lowercase());
    let parts: Vec<&str> = p.split('%').collect();
    if parts.len() == 1 {
        return h == p;
    }
    let mut pos = 0;
    for (i, part) in parts.iter().enumerate() {
        if part.is_empty() {
            continue;
        }
        if i == 0 {
            if !h.starts_with(part) {
                return false;
            }
            pos = part.len();
        } else if i == parts.len() - 1 {
            return h[pos..].ends_with(part);
        } else {
            match h[pos..].find(part) {
                Some(j) => pos += j + part.len(),
                None => return false,
            }
        }
    }
    true
}

fn compare(a: &Value, b: &Value) -> Option<std::cmp::Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64()?.partial_cmp(&y.as_f64()?),
        (Value::String(x), Value::String(y)) => Some(x.to_lowercase().cmp(&y.to_lowercase())),
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

fn eval(c: &Cond, r: &Record, acct: &Account, object: &str) -> Result<bool, String> {
    Ok(match c {
        Cond::And(a, b) => eval(a, r, acct, object)? && eval(b, r, acct, object)?,
        Cond::Or(a, b) => eval(a, r, acct, object)? || eval(b, r, acct, object)?,
        Cond::Not(a) => !eval(a, r, acct, object)?,
        Cond::Cmp(f, op, v) => {
            let name = canonical_field(acct, object, f).ok_or_else(|| format!("No such column '{f}' on entity '{object}'"))?;
            let actual = r.fields.get(&name).cloned().unwrap_or(Value::Null);
            match op.as_str() {
                "=" => actual == *v || compare(&actual, v) == Some(std::cmp::Ordering::Equal),
                "!=" => !(actual == *v || compare(&actual, v) == Some(std::cmp::Ordering::Equal)),
                "LIKE" => matches!((&actual, v), (Value::String(a), Value::String(p)) if like(a, p)),
                "<" => compare(&actual, v).is_some_and(|o| o.is_lt()),
                "<=" => compare(&actual, v).is_some_and(|o| o.is_le()),
                ">" => compare(&actual, v).is_some_and(|o| o.is_gt()),
                ">=" => compare(&actual, v).is_some_and(|o| o.is_ge()),
                other => return Err(format!("unexpected operator {other}")),
            }
        }
        Cond::In(f, negate, vals) => {
            let name = canonical_field(acct, object, f).ok_or_else(|| format!("No such column '{f}' on entity '{object}'"))?;
            let actual = r.fields.get(&name).cloned().unwrap_or(Value::Null);
            let hit = vals.iter().any(|v| actual == *v || compare(&actual, v) == Some(std::cmp::Ordering::Equal));
            hit != *negate
        }
    })
}

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
            match p.next() {
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
    let object = match check_object(&object) {
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
            match cond.as_ref().map(|c| eval(c, r, acct, object)).unwrap_or(Ok(true)) {
                Ok(true) => hits.push(r.clone()),
                Ok(false) => {}
                Err(e) => return errors::error(400, "INVALID_FIELD", &e, &[]),
            }
        }
        if let Some((f, desc)) = &order {
            let name = canonical_field(acct, object, f).unwrap_or_default();
            hits.sort_by(|a, b| {
                let o = compare(a.fields.get(&name).unwrap_or(&Value::Null), b.fields.get(&name).unwrap_or(&Value::Null)).unwrap_or(std::cmp::Ordering::Equal);
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

pub async fn query(State(sim): State<SharedSim>, Extension(caller): Extension<Caller>, Path(version): Path<String>, Query(q): Query<HashMap<String, String>>) -> Response {
    if let Err(r) = check_version(&version) {
        return r;
    }
    run_soql(&sim, &caller, &version, q.get("q").map(String::as_str).unwrap_or(""), false)
}

pub async fn query_all(State(sim): State<SharedSim>, Extension(caller): Extension<Caller>, Path(version): Path<String>, Query(q): Query<HashMap<String, String>>) -> Response {
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
    s == term_digits || (short.len() >= 7 && long.ends_with(short) && long.len() - short.len() <= 3)
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
            c if SOSL_SPECIAL.contains(c) && c != '-' && c != '+' => return Err(format!("unescaped reserved character '{c}' in the search term")),
            c => term.push(c),
        }
    }
    Err("unterminated search term".into())
}

pub async fn search(State(sim): State<SharedSim>, Extension(caller): Extension<Caller>, Path(version): Path<String>, Query(q): Query<HashMap<String, String>>) -> Response {
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
                if p.next() != Some(Tok::RParen) {
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
        match p.next() {
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
            let schema = acct.fields(object).cloned().unwrap_or_default();
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
                        _ => (def.kind == FieldType::Phone && phone_matches(v, &term_digits)) || v.to_lowercase().split_whitespace().any(|w| w == needle),
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
    fn soql_parses_and_or_in_and_like() {
        let toks = lex("SELECT Id FROM Task WHERE (CallExtId__c = 'a\\'b' OR Subject LIKE 'Call%') AND Status NOT IN ('Deferred') LIMIT 5").unwrap();
        let mut p = Parser { t: toks, i: 0 };
        assert!(p.kw("SELECT"));
        assert_eq!(p.word().unwrap(), "Id");
        assert!(p.kw("FROM"));
        p.word().unwrap();
        assert!(p.kw("WHERE"));
        let c = p.expr().unwrap();
        assert!(matches!(c, Cond::And(_, _)));
        assert!(like("Call with Jane", "call%"));
        assert!(like("Outbound call", "%call"));
        assert!(!like("Meeting", "call%"));
    }

    #[test]
    fn sosl_term_unescapes_and_rejects_reserved() {
        assert_eq!(sosl_term("FIND {\\+1 \\(415\\) 555\\-1212} IN PHONE FIELDS").unwrap().0, "+1 (415) 555-1212");
        assert!(sosl_term("FIND {a:b}").is_err());
    }
}
