//! `POST /crm/v3/objects/{object}/search`: filter groups OR'ed, filters AND'ed, HubSpot's
//! operators, archived records excluded, and records invisible until the index catches up.
//! `EQ` compares the raw stored string (case-insensitively), so "+14155551212" does not find
//! "(415) 555-1212"; the derived `hs_searchable_calculated_*` properties hold digits only.

use super::errors;
use super::objects::{parse_body, render, unknown_object};
use crate::gate::json;
use crate::state::{Caller, Record, SharedSim};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::Extension;
use serde_json::{json, Value};

pub const MAX_GROUPS: usize = 5;
pub const MAX_FILTERS_PER_GROUP: usize = 6;
pub const MAX_FILTERS: usize = 18;
pub const MAX_LIMIT: usize = 200;
pub const MAX_TOTAL: usize = 10_000;

fn value_str(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn cmp(a: &str, b: &str) -> std::cmp::Ordering {
    match (a.parse::<f64>(), b.parse::<f64>()) {
        (Ok(x), Ok(y)) => x.partial_cmp(&y).unwrap_or(std::cmp::Ordering::Equal),
        _ => a.to_lowercase().cmp(&b.to_lowercase()),
    }
}

/// CONTAINS_TOKEN: the value split into words, matched whole, with `*` as a wildcard.
fn contains_token(hay: &str, token: &str) -> bool {
    let token = token.to_lowercase();
    hay.to_lowercase().split(|c: char| !c.is_alphanumeric() && c != '@' && c != '.').filter(|w| !w.is_empty()).any(|w| wildcard(w, &token))
}

fn wildcard(word: &str, pat: &str) -> bool {
    match pat.split_once('*') {
        None => word == pat,
        Some((pre, rest)) => {
            if !word.starts_with(pre) {
                return false;
            }
            let tail = &word[pre.len()..];
            if rest.is_empty() {
                return true;
            }
            (0..=tail.len()).filter(|&i| tail.is_char_boundary(i)).any(|i| wildcard(&tail[i..], rest))
        }
    }
}

fn filter_matches(r: &Record, f: &Value) -> Result<bool, String> {
    let prop = f.get("propertyName").and_then(Value::as_str).ok_or("filter without propertyName")?;
    let op = f.get("operator").and_then(Value::as_str).unwrap_or("EQ");
    let actual = r.fields.get(prop).and_then(value_str).filter(|s| !s.is_empty());
    let value = f.get("value").and_then(value_str);
    let values: Vec<String> =
        f.get("values").and_then(Value::as_array).map(|a| a.iter().filter_map(value_str).collect()).unwrap_or_default();
    let need = |v: &Option<String>| v.clone().ok_or(format!("operator {op} needs a value"));
    Ok(match op {
        "HAS_PROPERTY" => actual.is_some(),
        "NOT_HAS_PROPERTY" => actual.is_none(),
        "EQ" => {
            let v = need(&value)?;
            actual.is_some_and(|a| a.eq_ignore_ascii_case(&v))
        }
        "NEQ" => !actual.is_some_and(|a| a.eq_ignore_ascii_case(&value.clone().unwrap_or_default())),
        "IN" => actual.is_some_and(|a| values.iter().any(|v| v.eq_ignore_ascii_case(&a))),
        "NOT_IN" => !actual.is_some_and(|a| values.iter().any(|v| v.eq_ignore_ascii_case(&a))),
        "CONTAINS_TOKEN" => actual.is_some_and(|a| contains_token(&a, &value.clone().unwrap_or_default())),
        "NOT_CONTAINS_TOKEN" => !actual.is_some_and(|a| contains_token(&a, &value.clone().unwrap_or_default())),
        "GT" | "GTE" | "LT" | "LTE" => {
            let v = need(&value)?;
            actual.is_some_and(|a| {
                let o = cmp(&a, &v);
                match op {
                    "GT" => o.is_gt(),
                    "GTE" => o.is_ge(),
                    "LT" => o.is_lt(),
                    _ => o.is_le(),
                }
            })
        }
        "BETWEEN" => {
            let lo = need(&value)?;
            let hi = f.get("highValue").and_then(value_str).ok_or("BETWEEN needs highValue")?;
            actual.is_some_and(|a| cmp(&a, &lo).is_ge() && cmp(&a, &hi).is_le())
        }
        other => return Err(format!("Unknown operator {other}")),
    })
}

pub async fn search(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Path(object): Path<String>,
    body: Bytes,
) -> Response {
    let table = match object.as_str() {
        "calls" | "0-48" => "calls",
        "emails" | "0-49" => "emails",
        "meetings" | "0-47" => "meetings",
        "contacts" | "0-1" => "contacts",
        _ => return unknown_object(&object),
    };
    let req = match parse_body(&body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let groups = req.get("filterGroups").and_then(Value::as_array).cloned().unwrap_or_default();
    let n_filters: usize = groups.iter().map(|g| g.get("filters").and_then(Value::as_array).map_or(0, Vec::len)).sum();
    if groups.len() > MAX_GROUPS
        || n_filters > MAX_FILTERS
        || groups.iter().any(|g| g.get("filters").and_then(Value::as_array).map_or(0, Vec::len) > MAX_FILTERS_PER_GROUP)
    {
        return errors::validation(&format!(
            "Too many filters: at most {MAX_GROUPS} filterGroups of {MAX_FILTERS_PER_GROUP} filters, {MAX_FILTERS} filters in all"
        ));
    }
    let limit = req.get("limit").and_then(Value::as_u64).unwrap_or(10) as usize;
    if limit > MAX_LIMIT {
        return errors::validation(&format!("limit must be at most {MAX_LIMIT}"));
    }
    let after = req.get("after").and_then(value_str).and_then(|a| a.parse::<usize>().ok()).unwrap_or(0);
    if after + limit > MAX_TOTAL {
        return errors::validation(&format!("Search results are limited to {MAX_TOTAL} records"));
    }
    let props: Option<Vec<String>> =
        req.get("properties").and_then(Value::as_array).map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect());
    let query = req.get("query").and_then(Value::as_str).map(str::to_lowercase);
    sim.with(&caller, |acct, now| {
        let mut hits = vec![];
        for r in acct.table(table).live().filter(|r| r.indexed_at_ms <= now) {
            let mut any = groups.is_empty();
            for g in &groups {
                let mut all = true;
                for f in g.get("filters").and_then(Value::as_array).into_iter().flatten() {
                    match filter_matches(r, f) {
                        Ok(true) => {}
                        Ok(false) => {
                            all = false;
                            break;
                        }
                        Err(e) => return errors::validation(&e),
                    }
                }
                if all {
                    any = true;
                    break;
                }
            }
            if any && query.as_ref().is_none_or(|q| r.fields.values().filter_map(Value::as_str).any(|v| v.to_lowercase().contains(q))) {
                hits.push(r);
            }
        }
        let total = hits.len();
        let page: Vec<Value> = hits.iter().skip(after).take(limit).map(|r| render(r, table, props.as_deref(), false)).collect();
        let mut body = json!({"total": total, "results": page});
        if after + limit < total.min(MAX_TOTAL) {
            body["paging"] = json!({"next": {"after": (after + limit).to_string()}});
        }
        json(200, body)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_wildcards() {
        assert!(contains_token("Jane Doe", "doe"));
        assert!(contains_token("jane@example.com", "*@example.com"));
        assert!(!contains_token("Jane Doe", "do"));
        assert!(contains_token("Jane Doe", "do*"));
    }
}
