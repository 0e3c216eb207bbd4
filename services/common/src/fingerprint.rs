//! Avro Parsing Canonical Form and the CRC-64-AVRO (Rabin) fingerprint, written from the
//! Avro specification rather than taken from apache-avro: 0.22 keeps logical-typed
//! primitives as `{"type":"long"}` in its canonical form, so its fingerprints disagree with
//! every other implementation (Java, fastavro) and other languages' readers would reject
//! our single-object frames.

use serde_json::{Map, Value};
use std::collections::HashSet;

const PRIMITIVES: &[&str] = &["null", "boolean", "int", "long", "float", "double", "bytes", "string"];
/// Canonical form keeps only these attributes, in this order.
const KEPT: &[&str] = &["name", "type", "fields", "symbols", "items", "values", "size"];

#[derive(Debug, thiserror::Error)]
#[error("schema is not valid Avro: {0}")]
pub struct CanonicalError(String);

/// The schema's Parsing Canonical Form, as the spec defines it.
pub fn parsing_canonical_form(schema: &Value) -> Result<String, CanonicalError> {
    let mut seen = HashSet::new();
    let mut out = String::new();
    write_pcf(schema, None, &mut seen, &mut out)?;
    Ok(out)
}

/// CRC-64-AVRO of the canonical form, as the 8 bytes that follow `C3 01` on the wire
/// (little-endian).
pub fn fingerprint(canonical_form: &str) -> [u8; 8] {
    rabin(canonical_form.as_bytes()).to_le_bytes()
}

pub fn fingerprint_hex(fp: &[u8; 8]) -> String {
    fp.iter().map(|b| format!("{b:02x}")).collect()
}

const EMPTY: u64 = 0xc15d_213a_a4d7_a795;

fn rabin(data: &[u8]) -> u64 {
    static TABLE: std::sync::OnceLock<[u64; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u64; 256];
        for (i, slot) in t.iter_mut().enumerate() {
            let mut fp = i as u64;
            for _ in 0..8 {
                fp = (fp >> 1) ^ (EMPTY & 0u64.wrapping_sub(fp & 1));
            }
            *slot = fp;
        }
        t
    });
    let mut fp = EMPTY;
    for &b in data {
        fp = (fp >> 8) ^ table[((fp ^ b as u64) & 0xff) as usize];
    }
    fp
}

fn full_name(name: &str, namespace: Option<&str>) -> String {
    if name.contains('.') {
        return name.to_string();
    }
    match namespace {
        Some(ns) if !ns.is_empty() => format!("{ns}.{name}"),
        _ => name.to_string(),
    }
}

fn write_str(s: &str, out: &mut String) {
    out.push_str(&serde_json::to_string(s).expect("strings always serialise"));
}

fn write_pcf(schema: &Value, enclosing_ns: Option<&str>, seen: &mut HashSet<String>, out: &mut String) -> Result<(), CanonicalError> {
    match schema {
        Value::String(s) => {
            if PRIMITIVES.contains(&s.as_str()) {
                write_str(s, out);
            } else {
                write_str(&full_name(s, enclosing_ns), out);
            }
            Ok(())
        }
        Value::Array(branches) => {
            out.push('[');
            for (i, b) in branches.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_pcf(b, enclosing_ns, seen, out)?;
            }
            out.push(']');
            Ok(())
        }
        Value::Object(obj) => write_object(obj, enclosing_ns, seen, out),
        other => Err(CanonicalError(format!("unexpected JSON {other}"))),
    }
}

fn write_object(
    obj: &Map<String, Value>,
    enclosing_ns: Option<&str>,
    seen: &mut HashSet<String>,
    out: &mut String,
) -> Result<(), CanonicalError> {
    let ty = obj.get("type").ok_or_else(|| CanonicalError("object without \"type\"".into()))?;
    let ty_name = match ty {
        Value::String(s) => s.as_str(),
        // {"type": {...}} or {"type": [...]}: the wrapper adds nothing.
        nested => return write_pcf(nested, enclosing_ns, seen, out),
    };
    if PRIMITIVES.contains(&ty_name) {
        // Logical types and other attributes are not part of the canonical form.
        write_str(ty_name, out);
        return Ok(());
    }
    let named = matches!(ty_name, "record" | "error" | "enum" | "fixed");
    if !named && !matches!(ty_name, "array" | "map") {
        // A reference to a named type, written as {"type": "Name"}.
        return write_pcf(ty, enclosing_ns, seen, out);
    }
    let mut ns = enclosing_ns.map(str::to_string);
    let mut name = None;
    if named {
        let raw = obj.get("name").and_then(Value::as_str).ok_or_else(|| CanonicalError(format!("{ty_name} without a name")))?;
        let own_ns = obj.get("namespace").and_then(Value::as_str);
        let full = full_name(raw, own_ns.or(enclosing_ns));
        if let Some(idx) = full.rfind('.') {
            ns = Some(full[..idx].to_string());
        } else {
            ns = None;
        }
        if !seen.insert(full.clone()) {
            // Later uses of a named type are references by name.
            write_str(&full, out);
            return Ok(());
        }
        name = Some(full);
    }
    out.push('{');
    let mut first = true;
    let mut sep = |out: &mut String| {
        if !std::mem::take(&mut first) {
            out.push(',');
        }
    };
    for key in KEPT {
        match *key {
            "name" => {
                if let Some(n) = &name {
                    sep(out);
                    out.push_str("\"name\":");
                    write_str(n, out);
                }
            }
            "type" => {
                sep(out);
                out.push_str("\"type\":");
                write_str(if ty_name == "error" { "record" } else { ty_name }, out);
            }
            "fields" => {
                if let Some(fields) = obj.get("fields") {
                    let fields = fields.as_array().ok_or_else(|| CanonicalError("fields is not an array".into()))?;
                    sep(out);
                    out.push_str("\"fields\":[");
                    for (i, f) in fields.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        let fname = f.get("name").and_then(Value::as_str).ok_or_else(|| CanonicalError("field without a name".into()))?;
                        let ftype = f.get("type").ok_or_else(|| CanonicalError(format!("field {fname} without a type")))?;
                        out.push_str("{\"name\":");
                        write_str(fname, out);
                        out.push_str(",\"type\":");
                        write_pcf(ftype, ns.as_deref(), seen, out)?;
                        out.push('}');
                    }
                    out.push(']');
                }
            }
            "symbols" => {
                if let Some(symbols) = obj.get("symbols") {
                    sep(out);
                    out.push_str("\"symbols\":");
                    out.push_str(&serde_json::to_string(symbols).expect("json value"));
                }
            }
            "items" | "values" => {
                if let Some(inner) = obj.get(*key) {
                    sep(out);
                    out.push('"');
                    out.push_str(key);
                    out.push_str("\":");
                    write_pcf(inner, ns.as_deref(), seen, out)?;
                }
            }
            "size" => {
                if let Some(size) = obj.get("size") {
                    let n = size.as_u64().ok_or_else(|| CanonicalError("fixed size is not a whole number".into()))?;
                    sep(out);
                    out.push_str(&format!("\"size\":{n}"));
                }
            }
            _ => unreachable!(),
        }
    }
    out.push('}');
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn spec_vector_for_null() {
        // From the Avro specification's test vectors (Java's SchemaNormalization).
        assert_eq!(fingerprint_hex(&fingerprint("\"null\"")), "8a8f25cce724dd63");
    }

    #[test]
    fn logical_types_reduce_to_their_primitive() {
        let s = json!({"type":"record","name":"R","namespace":"a.b","doc":"x","fields":[
            {"name":"t","type":{"type":"long","logicalType":"timestamp-millis"},"doc":"d","default":0}]});
        assert_eq!(parsing_canonical_form(&s).unwrap(), r#"{"name":"a.b.R","type":"record","fields":[{"name":"t","type":"long"}]}"#);
    }

    #[test]
    fn second_use_of_a_named_type_is_a_reference() {
        let s = json!({"type":"record","name":"R","fields":[
            {"name":"a","type":{"type":"enum","name":"E","symbols":["X"]}},
            {"name":"b","type":["null","E"]}]});
        assert_eq!(
            parsing_canonical_form(&s).unwrap(),
            r#"{"name":"R","type":"record","fields":[{"name":"a","type":{"name":"E","type":"enum","symbols":["X"]}},{"name":"b","type":["null","E"]}]}"#
        );
    }

    #[test]
    fn nameless_type_is_an_error_not_a_panic() {
        assert!(parsing_canonical_form(&json!({"type":"record","fields":[]})).is_err());
        assert!(parsing_canonical_form(&json!(42)).is_err());
    }
}
