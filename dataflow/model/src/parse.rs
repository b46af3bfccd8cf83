//! The wire parser (SPEC S1): one record's bytes -> a validated [`Delta`], or a dead
//! letter whose reason says exactly what is wrong (`S1.1 malformed: missing field "version"`).
//!
//! Parsing borrows: every field is first read as a `&RawValue` slice of the record, then
//! checked and converted on its own, so that a wrong type is reported per field. The
//! patch and the metadata stay ranges of the record's text, but this is the one place
//! that decides they are well-formed JSON values (see [`check_json_value`]): everything
//! downstream (the ledger, the sinks, both view stores) may then read them without a
//! fallible step.

use serde::Deserialize;
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::{DeadLetter, Delta, Operation, PatchFormat, SourcePos, Timestamp};

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

pub(crate) type Check<T> = Result<T, String>;

/// Parses and validates one record read at `pos`.
///
/// Unknown top-level fields are ignored (forward compatibility); `null` is taken as
/// absent; a field given twice is malformed.
pub fn parse_record(raw: &[u8], pos: SourcePos) -> Result<Delta, Box<DeadLetter>> {
    parse_fields(raw, pos).map_err(|what| DeadLetter::malformed(pos, raw, what))
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
    let provider_id = provider_field(w.provider_id, operation)?;
    let parent_id = w
        .parent_id
        .map(|v| uuid_value("parent_id", v))
        .transpose()?;
    let caused_by = w
        .caused_by
        .map(|v| uuid_value("caused_by", v))
        .transpose()?;
    let child_ids = w.child_ids.map(child_ids_field).transpose()?;
    if let Some(v) = w.applied_at {
        time_field("applied_at", v)?;
    }

    if let Some(p) = w.patch {
        check_json_value("patch", p)?;
    }
    let metadata = w
        .metadata
        .map(metadata_fields)
        .transpose()?
        .unwrap_or_default();

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
        child_ids: child_ids.unwrap_or_default(),
        caused_by,
        content_type: metadata.content_type,
        patch_format: metadata.patch_format,
        source_version: metadata.source_version,
        patch: w.patch.map(span),
        metadata: w.metadata.map(span),
        raw: text.into(),
        pos,
    })
}

/// `provider_id`: a non-empty string, required on `transform` (S3.3).
fn provider_field(value: Option<&RawValue>, operation: Operation) -> Check<Option<String>> {
    let provider_id = value.map(|v| string_field("provider_id", v)).transpose()?;
    if provider_id.as_deref() == Some("") {
        return Err("field \"provider_id\" is empty".into());
    }
    if let Some(p) = &provider_id {
        no_nul("provider_id", p)?;
    }
    if operation == Operation::Transform && provider_id.is_none() {
        return Err("missing field \"provider_id\" (required on transform, S3.3)".into());
    }
    Ok(provider_id)
}

/// `child_ids`: an array of UUIDs.
fn child_ids_field(value: &RawValue) -> Check<Vec<Uuid>> {
    let items: Vec<&RawValue> = serde_json::from_str(value.get())
        .map_err(|_| "field \"child_ids\" must be an array of UUIDs".to_string())?;
    items
        .into_iter()
        .map(|item| uuid_value("child_ids[]", item))
        .collect()
}

/// What a delta's `metadata` says that Studio reads.
#[derive(Default)]
struct Metadata {
    content_type: Option<String>,
    patch_format: Option<PatchFormat>,
    source_version: Option<u64>,
}

/// `metadata`: an object Studio can hold, with its known fields typed.
fn metadata_fields(m: &RawValue) -> Check<Metadata> {
    if !m.get().starts_with('{') {
        return Err("field \"metadata\" must be an object".into());
    }
    check_json_value("metadata", m)?;
    let meta: MetadataFields<'_> = serde_json::from_str(m.get())
        .map_err(|e| format!("field \"metadata\": {}", describe_json_error(e)))?;
    let content_type = meta
        .content_type
        .map(|v| string_field("metadata.content_type", v))
        .transpose()?;
    if let Some(c) = &content_type {
        no_nul("metadata.content_type", c)?;
    }
    let patch_format = match meta.patch_format {
        None => None,
        Some(v) => {
            let name = string_field("metadata.patch_format", v)?;
            Some(PatchFormat::from_wire(&name).ok_or_else(|| {
                format!(
                    "field \"metadata.patch_format\" is {}, expected \"json-patch\" or \"merge-patch\"",
                    quote(&name)
                )
            })?)
        }
    };
    let source_version = meta
        .source_version
        .map(|v| integer_field("metadata.source_version", v, 0))
        .transpose()?;
    Ok(Metadata {
        content_type,
        patch_format,
        source_version,
    })
}

/// The deepest nesting (arrays and objects in each other) a document, patch or metadata
/// value may have: what serde_json's recursion limit lets it read (its limit of 128
/// stops at the 128th level), so that every value Studio accepts reads back with any
/// serde_json reader (SQLite's JSON functions allow 1,000, Postgres's `jsonb` more).
pub const MAX_JSON_DEPTH: usize = 127;

/// S1.1 for a JSON-valued field (`patch`, `metadata`): the text must be a JSON value
/// that every part of Studio can hold. The record-level parse only checks the syntax
/// of these fields; here they are read as a [`serde_json::Value`] would be (the same
/// limits and errors, without building the value: the ledger parses the patch when it
/// applies it), which rejects numbers outside the range of an `f64` (`1e400`), nesting
/// deeper than [`MAX_JSON_DEPTH`] and escapes that are not Unicode (a lone surrogate
/// `"\ud800"`). A string holding U+0000 is refused too: PostgreSQL's `jsonb` and
/// `text` cannot store it, and both view stores must hold the same rows.
fn check_json_value(name: &str, value: &RawValue) -> Check<()> {
    use serde::de::DeserializeSeed;
    let holds_nul = std::cell::Cell::new(false);
    let mut reader = serde_json::Deserializer::from_str(value.get());
    Scan(&holds_nul)
        .deserialize(&mut reader)
        .and_then(|()| reader.end())
        .map_err(|e| {
            format!(
                "field \"{name}\" is not a JSON value Studio can hold: {}",
                strip_position(&e)
            )
        })?;
    if holds_nul.get() {
        return Err(format!(
            "field \"{name}\" holds the character U+0000, which the view stores cannot hold"
        ));
    }
    Ok(())
}

/// Reads any JSON value as `serde_json::Value` does, keeping nothing but whether a
/// string or an object key holds U+0000.
struct Scan<'a>(&'a std::cell::Cell<bool>);

impl<'de> serde::de::DeserializeSeed<'de> for Scan<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, reader: D) -> Result<(), D::Error> {
        reader.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Scan<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E>(self, text: &str) -> Result<(), E> {
        if text.contains('\0') {
            self.0.set(true);
        }
        Ok(())
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut items: A) -> Result<(), A::Error> {
        while items.next_element_seed(Scan(self.0))?.is_some() {}
        Ok(())
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut members: A) -> Result<(), A::Error> {
        while members.next_key_seed(Scan(self.0))?.is_some() {
            members.next_value_seed(Scan(self.0))?;
        }
        Ok(())
    }
}

/// serde_json's message without its "at line 1 column N" (a column of the field, not
/// of the record, would mislead).
fn strip_position(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.rfind(" at line ") {
        Some(cut) => text[..cut].to_owned(),
        None => text,
    }
}

fn no_nul(name: &str, text: &str) -> Check<()> {
    if text.contains('\0') {
        return Err(format!(
            "field \"{name}\" holds the character U+0000, which the view stores cannot hold"
        ));
    }
    Ok(())
}

pub(crate) fn describe_json_error(e: serde_json::Error) -> String {
    use serde_json::error::Category;
    match e.classify() {
        Category::Syntax | Category::Eof | Category::Io => format!("not valid JSON ({e})"),
        // Data errors from the derive: "duplicate field `id` at line 1 column 20".
        Category::Data => e.to_string().replace('`', "\""),
    }
}

pub(crate) fn required<'a>(name: &str, value: Option<&'a RawValue>) -> Check<&'a RawValue> {
    value.ok_or_else(|| format!("missing field \"{name}\""))
}

pub(crate) fn uuid_field(name: &str, value: Option<&RawValue>) -> Check<Uuid> {
    uuid_value(name, required(name, value)?)
}

pub(crate) fn uuid_value(name: &str, value: &RawValue) -> Check<Uuid> {
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
pub(crate) fn string_field(name: &str, value: &RawValue) -> Check<String> {
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

pub(crate) fn time_field(name: &str, value: &RawValue) -> Check<Timestamp> {
    let text = string_field(name, value)?;
    Timestamp::parse_rfc3339(&text)
        .ok_or_else(|| format!("field \"{name}\" is not an RFC 3339 time: {}", quote(&text)))
}

pub(crate) fn quote(text: &str) -> String {
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

    /// `line` with `field` set to the JSON text `value`, which need not parse as a
    /// `Value` (the field's old value moves to an ignored field).
    fn with_text(line: &str, field: &str, value: &str) -> String {
        let key = format!("\"{field}\":");
        assert!(line.contains(&key), "{field} in {line}");
        line.replacen(&key, &format!("{key}{value},\"ignored_{field}\":"), 1)
    }

    fn with_raw(field: &str, value: &str) -> String {
        with_text(GOOD, field, value)
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
    fn a_patch_or_metadata_studio_cannot_hold_is_malformed() {
        let deep = format!("{}{}", "[".repeat(300), "]".repeat(300));
        let cases = [
            (
                "patch",
                r#"{"content": 1e400}"#.to_owned(),
                "number out of range",
            ),
            (
                "patch",
                r#"{"content": -1e400}"#.to_owned(),
                "number out of range",
            ),
            (
                "patch",
                format!(r#"{{"content": {deep}}}"#),
                "recursion limit",
            ),
            ("patch", r#"{"content": "\ud800"}"#.to_owned(), "escape"),
            ("patch", r#"{"content": "\udc00x"}"#.to_owned(), "escape"),
            ("patch", r#"{"content": "a\u0000b"}"#.to_owned(), "U+0000"),
            ("patch", r#"{"a\u0000": 1}"#.to_owned(), "U+0000"),
            (
                "metadata",
                r#"{"x": 1e400}"#.to_owned(),
                "number out of range",
            ),
            ("metadata", format!(r#"{{"x": {deep}}}"#), "recursion limit"),
            ("provider_id", r#""p\u0000""#.to_owned(), "U+0000"),
            (
                "metadata",
                r#"{"content_type": "text/\u0000"}"#.to_owned(),
                "U+0000",
            ),
        ];
        for operation in ["create", "update", "transform"] {
            for (field, value, expected) in &cases {
                let mut v: serde_json::Value = serde_json::from_str(GOOD).unwrap();
                v["operation"] = operation.into();
                v["provider_id"] = "p".into();
                let got = reason(&with_text(&v.to_string(), field, value));
                assert!(
                    got.starts_with("S1.1 malformed: "),
                    "{operation} {field}={value}: {got}"
                );
                assert!(got.contains(expected), "{operation} {field}={value}: {got}");
            }
        }
    }

    #[test]
    fn extreme_values_studio_can_hold_are_accepted() {
        for patch in [
            r#"{"content": 1e308, "tiny": 5e-324, "neg": -0, "negf": -0.0}"#,
            r#"{"big": 18446744073709551615, "small": -9223372036854775808}"#,
            r#"{"content": "\ud83d\ude00 \u0001 \n"}"#,
        ] {
            parse_record(with("patch", patch).as_bytes(), SourcePos::at(0)).unwrap();
        }
        let deep = format!("{}{}", "[".repeat(127), "]".repeat(127));
        parse_record(with("patch", &deep).as_bytes(), SourcePos::at(0)).unwrap();
        let deeper = format!("{}{}", "[".repeat(128), "]".repeat(128));
        assert!(reason(&with_raw("patch", &deeper)).contains("recursion limit"));
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
