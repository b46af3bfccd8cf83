//! The wire parser (SPEC S1): one record's bytes -> a validated [`Delta`], or a dead
//! letter whose reason says exactly what is wrong (`S1.1 malformed: missing field "version"`).
//!
//! Parsing borrows: every field is first read as a `&RawValue` slice of the record, then
//! checked and converted on its own, so that a wrong type is reported per field and the
//! patch is never materialised here (it stays a range of the record's text).

use serde::Deserialize;
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::{DeadLetter, Delta, Operation, PatchFormat, Reason, SourcePos, Timestamp};

/// The record's fields, each as its raw JSON text (absent and `null` are both `None`).
#[derive(Deserialize)]
struct WireFields<'a> {
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    blob_id: Option<&'a RawValue>,
    #[serde(borrow)]
    user_id: Option<&'a RawValue>,
    #[serde(borrow)]
    operation: Option<&'a RawValue>,
    #[serde(borrow)]
    version: Option<&'a RawValue>,
    #[serde(borrow)]
    created_at: Option<&'a RawValue>,
    #[serde(borrow)]
    provider_id: Option<&'a RawValue>,
    #[serde(borrow)]
    patch: Option<&'a RawValue>,
    #[serde(borrow)]
    parent_id: Option<&'a RawValue>,
    #[serde(borrow)]
    child_ids: Option<&'a RawValue>,
    #[serde(borrow)]
    caused_by: Option<&'a RawValue>,
    #[serde(borrow)]
    metadata: Option<&'a RawValue>,
    #[serde(borrow)]
    applied_at: Option<&'a RawValue>,
}

/// The reserved metadata keys (SPEC S1).
#[derive(Deserialize)]
struct MetadataFields<'a> {
    #[serde(borrow)]
    content_type: Option<&'a RawValue>,
    #[serde(borrow)]
    patch_format: Option<&'a RawValue>,
    #[serde(borrow)]
    source_version: Option<&'a RawValue>,
}

type Check<T> = Result<T, String>;

/// Parses and validates one record read at `pos`.
///
/// Unknown top-level fields are ignored (forward compatibility); `null` is taken as
/// absent; a field given twice is malformed.
pub fn parse_record(raw: &[u8], pos: SourcePos) -> Result<Delta, Box<DeadLetter>> {
    parse_fields(raw, pos).map_err(|what| {
        Box::new(DeadLetter {
            pos,
            delta_id: None,
            blob_id: None,
            reason: Reason::Malformed(what),
            raw: raw.to_vec(),
        })
    })
}

fn parse_fields(raw: &[u8], pos: SourcePos) -> Check<Delta> {
    let text = std::str::from_utf8(raw).map_err(|e| format!("not UTF-8 ({e})"))?;
    let trimmed = text.trim_start();
    if trimmed.trim_end().is_empty() {
        return Err("empty record".into());
    }
    if !trimmed.starts_with('{') {
        return Err("not a JSON object".into());
    }
    let w: WireFields<'_> = serde_json::from_str(text).map_err(describe_json_error)?;

    let id = uuid_field("id", w.id)?;
    let blob_id = uuid_field("blob_id", w.blob_id)?;
    let user_id = uuid_field("user_id", w.user_id)?;
    let operation_name = string_field("operation", required("operation", w.operation)?)?;
    let operation = Operation::from_wire(&operation_name).ok_or_else(|| {
        format!(
            "field \"operation\" is {}, expected one of create, update, transform, delete, revert",
            quote(&operation_name)
        )
    })?;
    let version = integer_field("version", required("version", w.version)?, 1)?;
    let created_at = time_field("created_at", required("created_at", w.created_at)?)?;
    let provider_id = w
        .provider_id
        .map(|v| string_field("provider_id", v))
        .transpose()?;
    if provider_id.as_deref() == Some("") {
        return Err("field \"provider_id\" is empty".into());
    }
    if operation == Operation::Transform && provider_id.is_none() {
        return Err("missing field \"provider_id\" (required on transform, S3.3)".into());
    }
    let parent_id = w
        .parent_id
        .map(|v| uuid_value("parent_id", v))
        .transpose()?;
    let caused_by = w
        .caused_by
        .map(|v| uuid_value("caused_by", v))
        .transpose()?;
    let child_ids = match w.child_ids {
        None => Vec::new(),
        Some(v) => {
            let items: Vec<&RawValue> = serde_json::from_str(v.get())
                .map_err(|_| "field \"child_ids\" must be an array of UUIDs".to_string())?;
            items
                .into_iter()
                .map(|item| uuid_value("child_ids[]", item))
                .collect::<Check<Vec<_>>>()?
        }
    };
    if let Some(v) = w.applied_at {
        time_field("applied_at", v)?;
    }

    let (mut content_type, mut patch_format, mut source_version) = (None, None, None);
    if let Some(m) = w.metadata {
        if !m.get().starts_with('{') {
            return Err("field \"metadata\" must be an object".into());
        }
        let meta: MetadataFields<'_> = serde_json::from_str(m.get())
            .map_err(|e| format!("field \"metadata\": {}", describe_json_error(e)))?;
        content_type = meta
            .content_type
            .map(|v| string_field("metadata.content_type", v))
            .transpose()?;
        if let Some(v) = meta.patch_format {
            let name = string_field("metadata.patch_format", v)?;
            patch_format = Some(PatchFormat::from_wire(&name).ok_or_else(|| {
                format!(
                    "field \"metadata.patch_format\" is {}, expected \"json-patch\" or \"merge-patch\"",
                    quote(&name)
                )
            })?);
        }
        source_version = meta
            .source_version
            .map(|v| integer_field("metadata.source_version", v, 0))
            .transpose()?;
    }

    let span = |v: &RawValue| {
        let start = v.get().as_ptr() as usize - text.as_ptr() as usize;
        (start as u32)..((start + v.get().len()) as u32)
    };
    if text.len() > u32::MAX as usize {
        return Err("record larger than 4 GiB".into());
    }
    Ok(Delta {
        id,
        blob_id,
        user_id,
        operation,
        version,
        created_at,
        provider_id,
        parent_id,
        child_ids,
        caused_by,
        content_type,
        patch_format,
        source_version,
        patch: w.patch.map(span),
        metadata: w.metadata.map(span),
        raw: text.into(),
        pos,
    })
}

fn describe_json_error(e: serde_json::Error) -> String {
    use serde_json::error::Category;
    match e.classify() {
        Category::Syntax | Category::Eof | Category::Io => format!("not valid JSON ({e})"),
        // Data errors from the derive: "duplicate field `id` at line 1 column 20".
        Category::Data => e.to_string().replace('`', "\""),
    }
}

fn required<'a>(name: &str, value: Option<&'a RawValue>) -> Check<&'a RawValue> {
    value.ok_or_else(|| format!("missing field \"{name}\""))
}

fn uuid_field(name: &str, value: Option<&RawValue>) -> Check<Uuid> {
    uuid_value(name, required(name, value)?)
}

fn uuid_value(name: &str, value: &RawValue) -> Check<Uuid> {
    let text = string_field(name, value).map_err(|_| {
        format!(
            "field \"{name}\" must be a UUID string, got {}",
            excerpt(value.get())
        )
    })?;
    Uuid::try_parse(&text).map_err(|_| format!("field \"{name}\" is not a UUID: {}", quote(&text)))
}

/// A JSON string's contents; borrows nothing, but skips serde for the common case of a
/// string without escapes.
fn string_field(name: &str, value: &RawValue) -> Check<String> {
    let raw = value.get();
    if raw.len() >= 2 && raw.starts_with('"') && raw.ends_with('"') && !raw.contains('\\') {
        return Ok(raw[1..raw.len() - 1].to_owned());
    }
    serde_json::from_str::<String>(raw)
        .map_err(|_| format!("field \"{name}\" must be a string, got {}", excerpt(raw)))
}

fn integer_field(name: &str, value: &RawValue, min: u64) -> Check<u64> {
    let raw = value.get();
    match raw.parse::<u64>() {
        Ok(n) if n >= min && n <= i64::MAX as u64 => Ok(n),
        _ => Err(format!(
            "field \"{name}\" must be an integer >= {min}, got {}",
            excerpt(raw)
        )),
    }
}

fn time_field(name: &str, value: &RawValue) -> Check<Timestamp> {
    let text = string_field(name, value)?;
    Timestamp::parse_rfc3339(&text)
        .ok_or_else(|| format!("field \"{name}\" is not an RFC 3339 time: {}", quote(&text)))
}

fn quote(text: &str) -> String {
    excerpt(&serde_json::to_string(text).unwrap_or_default())
}

/// At most 64 characters of a value, for messages.
fn excerpt(text: &str) -> String {
    match text.char_indices().nth(64) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"id":"7f1d2c1e-0000-4000-8000-000000000001","blob_id":"7f1d2c1e-0000-4000-8000-0000000000b1","user_id":"7f1d2c1e-0000-4000-8000-0000000000a1","operation":"update","version":2,"created_at":"2026-01-01T00:00:00Z","patch":[{"op":"add","path":"/a","value":1}],"metadata":{"patch_format":"json-patch","x":[1]}}"#;

    fn reason(line: &str) -> String {
        parse_record(line.as_bytes(), SourcePos::at(0))
            .unwrap_err()
            .reason
            .to_string()
    }

    fn with(field: &str, value: &str) -> String {
        let mut v: serde_json::Value = serde_json::from_str(GOOD).unwrap();
        v[field] = serde_json::from_str(value).unwrap();
        v.to_string()
    }

    fn without(field: &str) -> String {
        let mut v: serde_json::Value = serde_json::from_str(GOOD).unwrap();
        v.as_object_mut().unwrap().remove(field);
        v.to_string()
    }

    #[test]
    fn parses_a_good_record_and_keeps_its_text() {
        let d = parse_record(GOOD.as_bytes(), SourcePos::at(7)).unwrap();
        assert_eq!(d.operation, Operation::Update);
        assert_eq!(d.version, 2);
        assert_eq!(
            d.patch_json(),
            Some(r#"[{"op":"add","path":"/a","value":1}]"#)
        );
        assert_eq!(d.patch_format, Some(PatchFormat::JsonPatch));
        assert_eq!(&*d.raw, GOOD);
        assert_eq!(d.pos, SourcePos::at(7));
    }

    #[test]
    fn names_each_missing_field() {
        for field in [
            "id",
            "blob_id",
            "user_id",
            "operation",
            "version",
            "created_at",
        ] {
            assert_eq!(
                reason(&without(field)),
                format!("S1.1 malformed: missing field \"{field}\"")
            );
        }
    }

    #[test]
    fn names_each_wrong_type() {
        let cases = [
            ("id", "42", "field \"id\" must be a UUID string"),
            ("id", "\"nope\"", "field \"id\" is not a UUID"),
            (
                "version",
                "0",
                "field \"version\" must be an integer >= 1, got 0",
            ),
            (
                "version",
                "1.5",
                "field \"version\" must be an integer >= 1",
            ),
            (
                "version",
                "\"2\"",
                "field \"version\" must be an integer >= 1",
            ),
            ("version", "-3", "field \"version\" must be an integer >= 1"),
            (
                "operation",
                "\"rename\"",
                "field \"operation\" is \"rename\"",
            ),
            ("created_at", "\"yesterday\"", "not an RFC 3339 time"),
            (
                "child_ids",
                "[\"x\"]",
                "field \"child_ids[]\" is not a UUID",
            ),
            ("child_ids", "{}", "must be an array"),
            ("metadata", "[]", "field \"metadata\" must be an object"),
            ("provider_id", "7", "field \"provider_id\" must be a string"),
        ];
        for (field, value, expected) in cases {
            let got = reason(&with(field, value));
            assert!(got.contains(expected), "{field}={value}: {got}");
            assert!(got.starts_with("S1.1 malformed: "), "{got}");
        }
        let got = reason(&with("metadata", r#"{"patch_format":"diff"}"#));
        assert!(got.contains("metadata.patch_format"), "{got}");
    }

    #[test]
    fn rejects_what_is_not_a_json_object() {
        assert!(reason("").contains("empty record"));
        assert!(reason("   ").contains("empty record"));
        assert!(reason("[1,2]").contains("not a JSON object"));
        assert!(reason(&GOOD[..GOOD.len() - 9]).contains("not valid JSON"));
        assert!(reason(&format!("{GOOD} x")).contains("not valid JSON"));
        let dup = GOOD.replacen("{", "{\"version\":3,", 1);
        assert!(
            reason(&dup).contains("duplicate field \"version\""),
            "{}",
            reason(&dup)
        );
        let bad = parse_record(&[b'{', 0xff, b'}'], SourcePos::at(1)).unwrap_err();
        assert!(bad.reason.to_string().contains("not UTF-8"));
        assert_eq!(bad.raw, vec![b'{', 0xff, b'}']);
    }

    #[test]
    fn transform_needs_a_provider() {
        let line = with("operation", "\"transform\"");
        assert!(reason(&line).contains("provider_id"));
    }

    #[test]
    fn null_is_absent_and_unknown_fields_are_ignored() {
        let d = parse_record(with("patch", "null").as_bytes(), SourcePos::at(0)).unwrap();
        assert_eq!(d.patch, None);
        parse_record(with("extra", "{\"deep\":[1]}").as_bytes(), SourcePos::at(0)).unwrap();
    }
}
