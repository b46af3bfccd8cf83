//! [`ExternalProvider`]: a provider implemented by a program (`command`), run once per
//! call as a sandboxed process ([`crate::sandbox`]) that speaks JSON lines.
//!
//! The protocol (docs/providers.md, "External providers"):
//!
//! ```text
//!  stdin  (Studio -> provider), one line per request, then end of file:
//!    {"request_id": ..., "provider_id": ..., "blob_id": ..., "version": ..., "content_type": ...,
//!     "doc": {...}, "derived": [...], "config": {...}, ...}
//!  stdout (provider -> Studio), for each request, in any order, each line naming its request:
//!    at most one output:  {"request_id": ID, "annotate": {merge patch of the blob}}
//!                     or  {"request_id": ID, "derive": {"content_type": "text/html", "doc": {...}}}
//!    then its result:     {"request_id": ID, "result": "completed"}
//!                     or  {"request_id": ID, "result": "failed", "error": "why"}
//!  exit status 0; standard error is free text (its tail goes into error messages)
//! ```
//!
//! The provider answers with what to write, not with delta records: Studio makes the
//! output deltas ([`crate::output`]), so their ids, versions and metadata follow the
//! same rules as the built-in providers' (S5.6, S5.7). A call that breaks the protocol
//! (a line that is not JSON, an unknown request, a second output, a missing result) or
//! the sandbox's limits fails every request of the call; a `failed` result fails its
//! request alone.
//!
//! Decision: one process per call, not a long-lived process per provider. The limits
//! then hold per call (`RLIMIT_CPU` counts a process's whole life, so a long-lived
//! process would share one CPU budget across all its requests), no state or document
//! survives from one request into another, a crash costs one call, and there is no
//! restart logic to get wrong. The price is the interpreter's start per call
//! (BENCHMARKS.md measures it), which batching amortises.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;
use studio_model::{Provider, Uuid};

use crate::sandbox::{self, Limits};
use crate::transformer::TransformFuture;
use crate::{ProviderError, ProviderInput, ProviderOutput, Transformer};

/// An external provider: its program and arguments, resolved at registration.
#[derive(Clone, Debug)]
pub struct ExternalProvider {
    command: Vec<String>,
}

impl ExternalProvider {
    /// The implementation of `provider` (which has a `command`). Its program is looked
    /// up on `PATH` now, and arguments naming existing files relative to the current
    /// directory are made absolute (the process runs in a temporary directory).
    pub fn new(provider: &Provider) -> Result<Self, String> {
        let (program, args) = provider
            .command
            .split_first()
            .ok_or("`command` is empty: give a program and its arguments")?;
        let mut command = vec![resolve_program(program)?];
        command.extend(args.iter().map(|arg| absolute_if_file(arg)));
        tracing::info!(provider = %provider.id, ?command, "external provider registered");
        Ok(ExternalProvider { command })
    }

    /// The command as it runs.
    pub fn command(&self) -> &[String] {
        &self.command
    }

    /// Runs one call for `inputs` (requests of one provider), blocking; answers one
    /// result per input, in order.
    pub fn call(&self, inputs: &[&ProviderInput]) -> Vec<Result<ProviderOutput, ProviderError>> {
        let Some(first) = inputs.first() else {
            return Vec::new();
        };
        let provider = &first.provider;
        let limits = Limits::of(provider);
        let stdin = request_lines(inputs);
        let answers = sandbox::run(&self.command, &limits, stdin)
            .map_err(|e| match e {
                sandbox::SandboxError::Timeout(ms) => ProviderError::Timeout(ms),
                other => ProviderError::Failed(other.to_string()),
            })
            .and_then(|stdout| {
                let ids: Vec<Uuid> = inputs.iter().map(|i| i.request.request_id).collect();
                parse_answers(&stdout, &ids).map_err(ProviderError::Failed)
            });
        match answers {
            Ok(answers) => answers,
            Err(e) => {
                tracing::warn!(provider = %provider.id, requests = inputs.len(), error = %e, "external provider call failed");
                inputs.iter().map(|_| Err(e.clone())).collect()
            }
        }
    }
}

impl Transformer for ExternalProvider {
    fn transform<'a>(&'a self, input: &'a ProviderInput) -> TransformFuture<'a> {
        Box::pin(async move {
            let (this, input) = (self.clone(), input.clone());
            tokio::task::spawn_blocking(move || this.call(&[&input]).remove(0))
                .await
                .map_err(|e| ProviderError::Failed(format!("the call's thread failed: {e}")))?
        })
    }
}

/// The program's path: as given when it holds a `/` (made absolute), else the first
/// match on `PATH`.
fn resolve_program(program: &str) -> Result<String, String> {
    if program.contains('/') {
        let path = absolute(Path::new(program));
        return if path.is_file() {
            Ok(path.display().to_string())
        } else {
            Err(format!(
                "the program {program:?} of `command` does not exist; fix the path"
            ))
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
        .map(|found| found.display().to_string())
        .ok_or_else(|| {
            format!(
                "the program {program:?} of `command` is not on PATH; install it or give its absolute path"
            )
        })
}

fn absolute_if_file(arg: &str) -> String {
    let path = Path::new(arg);
    if path.is_relative() && !arg.starts_with('-') && path.is_file() {
        absolute(path).display().to_string()
    } else {
        arg.to_owned()
    }
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// One JSON line per request: the request's fields and the provider's `config`.
fn request_lines(inputs: &[&ProviderInput]) -> Vec<u8> {
    let mut lines = Vec::new();
    for input in inputs {
        let mut line = serde_json::to_value(&input.request).expect("a request serialises");
        line["config"] = input.provider.config.value();
        serde_json::to_writer(&mut lines, &line).expect("writing to memory");
        lines.push(b'\n');
    }
    lines
}

/// One line of a provider's answer.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AnswerLine {
    request_id: Uuid,
    #[serde(default)]
    annotate: Option<Value>,
    #[serde(default)]
    derive: Option<Derived>,
    #[serde(default)]
    result: Option<Status>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Derived {
    content_type: String,
    doc: Value,
}

#[derive(Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
enum Status {
    Completed,
    Failed,
}

/// What one request got so far.
#[derive(Default)]
struct Answered {
    output: Option<ProviderOutput>,
    result: Option<Result<(), String>>,
}

/// The answers in `stdout` for the requests `ids`, in their order; an error when the
/// output breaks the protocol.
fn parse_answers(
    stdout: &[u8],
    ids: &[Uuid],
) -> Result<Vec<Result<ProviderOutput, ProviderError>>, String> {
    let mut answered: Vec<Answered> = ids.iter().map(|_| Answered::default()).collect();
    for (n, line) in stdout.split(|b| *b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let excerpt = || String::from_utf8_lossy(&line[..line.len().min(120)]).into_owned();
        let line: AnswerLine = serde_json::from_slice(line).map_err(|e| {
            format!(
                "answer line {} is not a protocol line ({e}): {}",
                n + 1,
                excerpt()
            )
        })?;
        let place = ids
            .iter()
            .position(|id| *id == line.request_id)
            .ok_or_else(|| {
                format!(
                    "answer line {} names request {}, which it was not given",
                    n + 1,
                    line.request_id
                )
            })?;
        let request = &mut answered[place];
        let broken = |what: &str| format!("answer line {}: {what}: {}", n + 1, excerpt());
        if request.result.is_some() {
            return Err(broken("a line after the request's result"));
        }
        match (line.annotate, line.derive, line.result) {
            (Some(patch), None, None) if request.output.is_none() => {
                if !patch.is_object() {
                    return Err(broken("`annotate` must be a JSON object (a merge patch)"));
                }
                request.output = Some(ProviderOutput::Annotate(patch));
            }
            (None, Some(derived), None) if request.output.is_none() => {
                request.output = Some(ProviderOutput::Derive {
                    content_type: derived.content_type,
                    doc: derived.doc,
                });
            }
            (None, None, Some(status)) => {
                request.result = Some(match status {
                    Status::Completed => Ok(()),
                    Status::Failed => Err(line.error.unwrap_or_else(|| "no error given".into())),
                });
            }
            (None, None, None) => {
                return Err(broken(
                    "no `annotate`, `derive` or `result`: each line carries one",
                ));
            }
            _ => {
                return Err(broken(
                    "one output and then one result per request, one of them per line",
                ));
            }
        }
    }
    Ok(answered
        .into_iter()
        .zip(ids)
        .map(|(answer, id)| match answer.result {
            // Nothing to write: an empty merge patch changes nothing.
            Some(Ok(())) => Ok(answer
                .output
                .unwrap_or_else(|| ProviderOutput::Annotate(Value::Object(Default::default())))),
            Some(Err(why)) => Err(ProviderError::Failed(format!(
                "the provider answered failed: {why}"
            ))),
            None => Err(ProviderError::Failed(format!(
                "the provider exited without a result line for request {id}"
            ))),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parse(lines: &[Value], ids: &[Uuid]) -> Result<Vec<Result<ProviderOutput, String>>, String> {
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        parse_answers(text.as_bytes(), ids).map(|all| {
            all.into_iter()
                .map(|r| r.map_err(|e| e.to_string()))
                .collect()
        })
    }

    #[test]
    fn outputs_and_results_are_matched_to_their_requests() {
        let (a, b, c) = (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3));
        let answers = parse(
            &[
                json!({"request_id": b, "derive": {"content_type": "text/html", "doc": {"content": "<p/>"}}}),
                json!({"request_id": a, "annotate": {"words": 2}}),
                json!({"request_id": c, "result": "failed", "error": "too long"}),
                json!({"request_id": a, "result": "completed"}),
                json!({"request_id": b, "result": "completed"}),
            ],
            &[a, b, c],
        )
        .unwrap();
        assert_eq!(
            answers[0],
            Ok(ProviderOutput::Annotate(json!({"words": 2})))
        );
        assert_eq!(
            answers[1],
            Ok(ProviderOutput::Derive {
                content_type: "text/html".into(),
                doc: json!({"content": "<p/>"})
            })
        );
        assert!(answers[2].as_ref().unwrap_err().contains("too long"));
    }

    #[test]
    fn a_completed_result_without_output_writes_nothing_and_a_missing_result_fails() {
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let answers = parse(&[json!({"request_id": a, "result": "completed"})], &[a, b]).unwrap();
        assert_eq!(answers[0], Ok(ProviderOutput::Annotate(json!({}))));
        assert!(
            answers[1]
                .as_ref()
                .unwrap_err()
                .contains("without a result line")
        );
    }

    #[test]
    fn protocol_breaks_fail_the_call() {
        let a = Uuid::from_u128(1);
        for (lines, expected) in [
            (
                vec![json!({"request_id": Uuid::from_u128(9), "result": "completed"})],
                "was not given",
            ),
            (
                vec![
                    json!({"request_id": a, "annotate": {}}),
                    json!({"request_id": a, "annotate": {}}),
                ],
                "one output",
            ),
            (
                vec![
                    json!({"request_id": a, "result": "completed"}),
                    json!({"request_id": a, "annotate": {}}),
                ],
                "after the request's result",
            ),
            (
                vec![json!({"request_id": a, "annotate": [1]})],
                "must be a JSON object",
            ),
            (vec![json!({"request_id": a})], "no `annotate`"),
            (
                vec![json!({"request_id": a, "result": "done"})],
                "not a protocol line",
            ),
            (
                vec![json!({"request_id": a, "result": "completed", "extra": 1})],
                "not a protocol line",
            ),
        ] {
            let err = parse(&lines, &[a]).unwrap_err();
            assert!(err.contains(expected), "{err}");
        }
        let err = parse_answers(b"{not json\n", &[a]).unwrap_err();
        assert!(err.contains("line 1"), "{err}");
    }
}
