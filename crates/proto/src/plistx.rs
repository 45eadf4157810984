//! Small helpers for reading and building plist dictionaries.

use plist::{Dictionary, Value};

use crate::error::{ProtoError, Result};

/// Serialise a value as an XML plist (what lockdownd and usbmuxd speak).
pub fn to_xml(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing to a Vec cannot fail for a well-formed Value.
    value
        .to_writer_xml(&mut out)
        .expect("plist serialisation to memory");
    out
}

/// Serialise a value as a binary plist (what DeviceLink services speak).
pub fn to_binary(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    value
        .to_writer_binary(&mut out)
        .expect("plist serialisation to memory");
    out
}

/// Parse either XML or binary plist bytes.
pub fn from_bytes(bytes: &[u8]) -> Result<Value> {
    Ok(Value::from_reader(std::io::Cursor::new(bytes))?)
}

/// Parse bytes that must hold a dictionary.
pub fn dict_from_bytes(bytes: &[u8]) -> Result<Dictionary> {
    match from_bytes(bytes)? {
        Value::Dictionary(d) => Ok(d),
        other => Err(ProtoError::protocol(format!(
            "expected a dictionary, got {}",
            kind(&other)
        ))),
    }
}

pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Array(_) => "array",
        Value::Dictionary(_) => "dictionary",
        Value::Boolean(_) => "boolean",
        Value::Data(_) => "data",
        Value::Date(_) => "date",
        Value::Real(_) => "real",
        Value::Integer(_) => "integer",
        Value::String(_) => "string",
        Value::Uid(_) => "uid",
        _ => "unknown",
    }
}

/// Typed access to dictionary entries.
pub trait DictExt {
    fn str_of(&self, key: &str) -> Option<&str>;
    fn u64_of(&self, key: &str) -> Option<u64>;
    fn bool_of(&self, key: &str) -> Option<bool>;
    fn data_of(&self, key: &str) -> Option<&[u8]>;
    fn dict_of(&self, key: &str) -> Option<&Dictionary>;
    fn req_str(&self, key: &str) -> Result<&str> {
        self.str_of(key)
            .ok_or_else(|| ProtoError::protocol(format!("missing string key {key}")))
    }
}

impl DictExt for Dictionary {
    fn str_of(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_string)
    }
    fn u64_of(&self, key: &str) -> Option<u64> {
        match self.get(key)? {
            Value::Integer(i) => i.as_unsigned().or_else(|| {
                i.as_signed()
                    .and_then(|s| if s >= 0 { Some(s as u64) } else { None })
            }),
            _ => None,
        }
    }
    fn bool_of(&self, key: &str) -> Option<bool> {
        self.get(key).and_then(Value::as_boolean)
    }
    fn data_of(&self, key: &str) -> Option<&[u8]> {
        self.get(key).and_then(Value::as_data)
    }
    fn dict_of(&self, key: &str) -> Option<&Dictionary> {
        self.get(key).and_then(Value::as_dictionary)
    }
}

/// Build a dictionary from `(key, value)` pairs.
pub fn dict<I, K>(pairs: I) -> Dictionary
where
    I: IntoIterator<Item = (K, Value)>,
    K: Into<String>,
{
    let mut d = Dictionary::new();
    for (k, v) in pairs {
        d.insert(k.into(), v);
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml_and_binary_round_trip() {
        let d = dict([
            ("A", Value::from("x")),
            ("B", Value::from(7u64)),
            ("C", Value::Boolean(true)),
            ("D", Value::Data(vec![1, 2, 3])),
        ]);
        let v = Value::Dictionary(d.clone());
        assert_eq!(dict_from_bytes(&to_xml(&v)).unwrap(), d);
        assert_eq!(dict_from_bytes(&to_binary(&v)).unwrap(), d);
        let back = dict_from_bytes(&to_binary(&v)).unwrap();
        assert_eq!(back.str_of("A"), Some("x"));
        assert_eq!(back.u64_of("B"), Some(7));
        assert_eq!(back.bool_of("C"), Some(true));
        assert_eq!(back.data_of("D"), Some(&[1u8, 2, 3][..]));
        assert!(back.req_str("Z").is_err());
    }

    #[test]
    fn non_dictionary_is_an_error() {
        let v = Value::Array(vec![]);
        assert!(dict_from_bytes(&to_xml(&v)).is_err());
        assert!(dict_from_bytes(b"garbage").is_err());
    }
}
