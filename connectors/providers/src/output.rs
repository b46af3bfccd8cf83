//! Output deltas: a provider's answer as delta records (S3.1, S3.3, S5.6, S5.7).
//!
//! - An annotation becomes a `transform` of the blob at `version + 1`, with the
//!   provider's merge patch, unless the patch changes nothing.
//! - A derived document becomes a `create` of the derived blob (id: UUID v5 of provider
//!   and source) with `parent_id` = the source, or, when the provider derived it
//!   before, a `transform` of it holding the JSON Patch from what it holds to the new
//!   document; nothing when they are equal (an unchanged branch stops the cascade) or
//!   when the derived blob was deleted.
//!
//! Every output carries `caused_by` (the triggering delta), the triggering change's
//! `created_at` (so a replay writes the same records), and metadata `request_id`,
//! `source_blob_id`, `fingerprint` and `source_version` (and `output_fingerprint` when
//! an annotation changes what the provider reads), by which the dataflow settles the
//! request when the output is accepted. Its id is UUID v5 of (request, target,
//! target version): a retry writes the same delta again (a duplicate, S4.2), an output
//! rebuilt on a newer version of its target is a new one.

use serde_json::{Value, json};
use studio_model::provider::{derived_blob_id, output_delta_id};
use studio_model::{Provider, TransformRequest, Uuid};

use crate::ProviderOutput;

/// One output delta: its id, its target, and its record (one JSON line).
#[derive(Clone, Debug, PartialEq)]
pub struct OutputDelta {
    /// The delta's id.
    pub id: Uuid,
    /// The blob it changes.
    pub blob_id: Uuid,
    /// The record.
    pub record: String,
}

/// The output deltas of `output`, an answer of `provider` to `request`.
pub fn output_deltas(
    request: &TransformRequest,
    provider: &Provider,
    output: &ProviderOutput,
) -> Vec<OutputDelta> {
    match output {
        ProviderOutput::Annotate(patch) => {
            let before = request.doc.value();
            let mut after = before.clone();
            json_patch::merge(&mut after, patch);
            if after == before {
                return Vec::new();
            }
            let output_fingerprint = provider.fingerprint(&after);
            let mut metadata = json!({"patch_format": "merge-patch"});
            if output_fingerprint != request.fingerprint {
                metadata["output_fingerprint"] = json!(output_fingerprint);
            }
            vec![record(
                request,
                provider,
                Target::Transform {
                    blob: request.blob_id,
                    version: request.version + 1,
                },
                patch.clone(),
                metadata,
            )]
        }
        ProviderOutput::Derive { content_type, doc } => {
            let Some(existing) = request
                .derived
                .iter()
                .find(|d| d.provider_id == provider.id)
            else {
                return vec![record(
                    request,
                    provider,
                    Target::Create {
                        blob: derived_blob_id(&provider.id, request.blob_id),
                        parent: request.blob_id,
                    },
                    doc.clone(),
                    json!({"content_type": content_type}),
                )];
            };
            let existing_doc = existing.doc.value();
            if existing.deleted || &existing_doc == doc {
                return Vec::new();
            }
            let patch = json_patch::diff(&existing_doc, doc);
            vec![record(
                request,
                provider,
                Target::Transform {
                    blob: existing.blob_id,
                    version: existing.version + 1,
                },
                serde_json::to_value(patch).expect("a JSON Patch serialises"),
                json!({"patch_format": "json-patch"}),
            )]
        }
    }
}

/// What an output delta does.
enum Target {
    /// Creates the derived blob `blob` (version 1) from `parent`.
    Create { blob: Uuid, parent: Uuid },
    /// Transforms `blob` into `version`.
    Transform { blob: Uuid, version: u64 },
}

fn record(
    request: &TransformRequest,
    provider: &Provider,
    target: Target,
    patch: Value,
    mut metadata: Value,
) -> OutputDelta {
    let (blob, operation, version, parent) = match target {
        Target::Create { blob, parent } => (blob, "create", 1, Some(parent)),
        Target::Transform { blob, version } => (blob, "transform", version, None),
    };
    let id = output_delta_id(request.request_id, blob, version);
    let extra = metadata.as_object_mut().expect("metadata is an object");
    extra.insert("request_id".into(), json!(request.request_id));
    extra.insert("source_blob_id".into(), json!(request.blob_id));
    extra.insert("source_version".into(), json!(request.version));
    extra.insert("fingerprint".into(), json!(request.fingerprint));
    let mut record = json!({
        "id": id,
        "blob_id": blob,
        "user_id": request.user_id,
        "operation": operation,
        "version": version,
        "created_at": request.created_at.to_rfc3339(),
        "provider_id": provider.id,
        "caused_by": request.caused_by,
        "patch": patch,
        "metadata": metadata,
    });
    if let Some(parent) = parent {
        record["parent_id"] = json!(parent);
    }
    OutputDelta {
        id,
        blob_id: blob,
        record: record.to_string(),
    }
}
