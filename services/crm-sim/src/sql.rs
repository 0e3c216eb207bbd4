//! The SQL-like query languages two CRMs offer (Salesforce SOQL, Zoho COQL) share one lexer,
//! parser and evaluator: `a = 'x' AND (b IN (1, 2) OR c LIKE 'y%') AND d IS NOT NULL`.
//! Text comparisons ignore case, as both CRMs do.

use crate::state::Record;
use serde_json::{json, Value};

#[derive(Debug, Clone, PartialEq)]
pub enum Tok {
    Word(String),
    Str(String),
    Num(f64),
    Op(String),
    LParen,
    RParen,
    Comma,
}

pub fn lex(q: &str) -> Result<Vec<Tok>, String> {
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
pub enum Cond {
    And(Box<Cond>, Box<Cond>),
    Or(Box<Cond>, Box<Cond>),
    Not(Box<Cond>),
    Cmp(String, String, Value),
    In(String, bool, Vec<Value>),
    IsNull(String, bool),
}

pub struct Parser {
    pub t: Vec<Tok>,
    pub i: usize,
}

impl Parser {
    pub fn peek(&self) -> Option<&Tok> {
        self.t.get(self.i)
    }
    pub fn bump(&mut self) -> Option<Tok> {
        let t = self.t.get(self.i).cloned();
        self.i += 1;
        t
    }
    pub fn kw(&mut self, k: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Word(w)) if w.eq_ignore_ascii_case(k)) {
            self.i += 1;
            true
        } else {
            false
        }
    }
    pub fn word(&mut self) -> Result<String, String> {
        match self.bump() {
            Some(Tok::Word(w)) => Ok(w),
            other => Err(format!("expected a name, found {other:?}")),
        }
    }
    pub fn value(&mut self) -> Result<Value, String> {
        match self.bump() {
            Some(Tok::Str(s)) => Ok(json!(s)),
            Some(Tok::Num(n)) => Ok(json!(n)),
            Some(Tok::Word(w)) if w.eq_ignore_ascii_case("null") => Ok(Value::Null),
            Some(Tok::Word(w)) if w.eq_ignore_ascii_case("true") => Ok(json!(true)),
            Some(Tok::Word(w)) if w.eq_ignore_ascii_case("false") => Ok(json!(false)),
            other => Err(format!("expected a value, found {other:?}")),
        }
    }
    pub fn expr(&mut self) -> Result<Cond, String> {
        let mut left = self.term()?;
        while self.kw("OR") {
            left = Cond::Or(Box::new(left), Box::new(self.term()?));
        }
        Ok(left)
    }
    pub fn term(&mut self) -> Result<Cond, String> {
        let mut left = self.factor()?;
        while self.kw("AND") {
            left = Cond::And(Box::new(left), Box::new(self.factor()?));
        }
        Ok(left)
    }
    pub fn factor(&mut self) -> Result<Cond, String> {
        if self.kw("NOT") {
            return Ok(Cond::Not(Box::new(self.factor()?)));
        }
        if self.peek() == Some(&Tok::LParen) {
            self.i += 1;
            let e = self.expr()?;
            if self.bump() != Some(Tok::RParen) {
                return Err("expected ')'".into());
            }
            return Ok(e);
        }
        let field = self.word()?;
        if self.kw("IS") {
            let negate = self.kw("NOT");
            if !self.kw("NULL") {
                return Err("expected NULL after IS".into());
            }
            return Ok(Cond::IsNull(field, negate));
        }
        let negate = self.kw("NOT");
        if self.kw("IN") {
            if self.bump() != Some(Tok::LParen) {
                return Err("expected '(' after IN".into());
            }
            let mut vals = vec![self.value()?];
            while self.peek() == Some(&Tok::Comma) {
                self.i += 1;
                vals.push(self.value()?);
            }
            if self.bump() != Some(Tok::RParen) {
                return Err("expected ')'".into());
            }
            return Ok(Cond::In(field, negate, vals));
        }
        if self.kw("LIKE") {
            let c = Cond::Cmp(field, "LIKE".into(), self.value()?);
            return Ok(if negate { Cond::Not(Box::new(c)) } else { c });
        }
        if negate {
            return Err("NOT must be followed by IN or LIKE here".into());
        }
        if self.kw("BETWEEN") {
            let lo = self.value()?;
            if !self.kw("AND") {
                return Err("expected AND in BETWEEN".into());
            }
            let hi = self.value()?;
            return Ok(Cond::And(Box::new(Cond::Cmp(field.clone(), ">=".into(), lo)), Box::new(Cond::Cmp(field, "<=".into(), hi))));
        }
        match self.bump() {
            Some(Tok::Op(op)) => Ok(Cond::Cmp(field, op, self.value()?)),
            other => Err(format!("unexpected token: {other:?}")),
        }
    }
}

pub fn like(hay: &str, pat: &str) -> bool {
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

pub fn compare(a: &Value, b: &Value) -> Option<std::cmp::Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64()?.partial_cmp(&y.as_f64()?),
        (Value::String(x), Value::String(y)) => Some(x.to_lowercase().cmp(&y.to_lowercase())),
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

/// Evaluates a condition on a record; `resolve` maps a name in the query to the stored field
/// (or says it does not exist). A lookup stored as `{"id": ...}` compares by its id.
pub fn eval(c: &Cond, r: &Record, resolve: &dyn Fn(&str) -> Result<String, String>) -> Result<bool, String> {
    let get = |name: &str| -> Value {
        match r.fields.get(name) {
            Some(Value::Object(o)) => o.get("id").cloned().unwrap_or(Value::Null),
            Some(v) => v.clone(),
            None => Value::Null,
        }
    };
    Ok(match c {
        Cond::And(a, b) => eval(a, r, resolve)? && eval(b, r, resolve)?,
        Cond::Or(a, b) => eval(a, r, resolve)? || eval(b, r, resolve)?,
        Cond::Not(a) => !eval(a, r, resolve)?,
        Cond::IsNull(f, negate) => get(&resolve(f)?).is_null() != *negate,
        Cond::Cmp(f, op, v) => {
            let actual = get(&resolve(f)?);
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
            let actual = get(&resolve(f)?);
            let hit = vals.iter().any(|v| actual == *v || compare(&actual, v) == Some(std::cmp::Ordering::Equal));
            hit != *negate
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_or_in_like_is_null() {
        let toks = lex("SELECT Id FROM Task WHERE (CallExtId__c = 'a\\'b' OR Subject LIKE 'Call%') AND Status NOT IN ('Deferred') AND x IS NOT NULL LIMIT 5").unwrap();
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
}
