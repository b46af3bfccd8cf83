//! External providers as real processes (python3): the sample provider works; one that
//! loops forever, burns CPU, allocates without bound, prints 100 MB, breaks the
//! protocol or exits unsuccessfully is stopped and its request fails with the reason,
//! while the runtime's other providers go on; the environment is cleared but for the
//! allow-list, the working directory is fresh and removed; the policy refuses
//! credentials and `api_key_env` names off its allow-list.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::{patch_of, request_for, run_one};
use serde_json::{Value, json};
use studio_model::{ProcessingResult, ProcessingStatus, Provider};
use studio_providers::{Policy, Refused, Runtime};

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The Python interpreter itself: `python3` on PATH may be a wrapper script (pyenv's
/// shims) that adds variables of its own to the environment.
fn python() -> String {
    static PYTHON: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PYTHON
        .get_or_init(|| {
            let out = std::process::Command::new("python3")
                .args(["-c", "import sys; print(sys.executable)"])
                .output()
                .expect("python3 is installed");
            String::from_utf8(out.stdout).unwrap().trim().to_owned()
        })
        .clone()
}

fn word_count_script() -> String {
    let path = manifest_dir().join("../../samples/providers/word_count.py");
    path.canonicalize().unwrap().display().to_string()
}

fn misbehaving_script() -> String {
    let path = manifest_dir().join("tests/providers/misbehaving.py");
    path.display().to_string()
}

/// A provider running `command`, one attempt unless `extra` says otherwise.
fn external(id: &str, command: Vec<String>, extra: Value) -> Provider {
    let mut def = json!({
        "id": id, "version": "1", "command": command, "max_attempts": 1,
        "backoff_ms": 10, "backoff_max_ms": 10,
    });
    for (k, v) in extra.as_object().unwrap() {
        def[k] = v.clone();
    }
    serde_json::from_value(def).unwrap()
}

fn word_count() -> Provider {
    external("word-count", vec![python(), word_count_script()], json!({}))
}

fn misbehaving(mode: &str, extra: Value) -> Provider {
    external(
        mode,
        vec![python(), misbehaving_script(), mode.into()],
        extra,
    )
}

/// Runs one request of each provider at once on one runtime; the results by provider.
fn run_all(providers: &[Provider]) -> Vec<(ProcessingResult, Vec<Value>)> {
    let (runtime, answers) = Runtime::new(2).unwrap();
    for p in providers {
        assert!(runtime.register_runnable(p.clone()).unwrap(), "{}", p.id);
    }
    for (n, p) in providers.iter().enumerate() {
        let request = request_for(p, n as u128 + 1, "three short words");
        runtime.submit(request, Arc::new(|_| true));
    }
    let mut results: Vec<_> = (0..providers.len())
        .map(|_| {
            let outcome = answers
                .recv_timeout(Duration::from_secs(120))
                .expect("an answer")
                .outcome
                .expect("it ran");
            let patches = outcome.outputs.iter().map(patch_of).collect();
            (outcome.result, patches)
        })
        .collect();
    results.sort_by_key(|(r, _)| {
        providers
            .iter()
            .position(|p| p.id == r.provider_id)
            .unwrap()
    });
    results
}

fn failed_with(result: &ProcessingResult, reason: &str) {
    assert_eq!(result.status, ProcessingStatus::Failed, "{result:?}");
    let error = result.error.as_deref().unwrap_or("");
    assert!(
        error.contains(reason),
        "{}: {error:?} should say {reason:?}",
        result.provider_id
    );
}

#[test]
fn the_sample_provider_annotates_and_a_second_call_is_a_fresh_process() {
    let (runtime, answers) = Runtime::new(1).unwrap();
    let p = word_count();
    assert!(runtime.register_runnable(p.clone()).unwrap());
    for (blob, text, words) in [(1, "one two three", 3), (2, "a b c d e", 5)] {
        let outcome = run_one(&runtime, &answers, request_for(&p, blob, text))
            .outcome
            .unwrap();
        assert_eq!(outcome.result.status, ProcessingStatus::Completed);
        assert_eq!(outcome.result.attempts, 1);
        let record: Value = serde_json::from_str(&outcome.outputs[0].record).unwrap();
        assert_eq!(record["operation"], "transform");
        assert_eq!(record["provider_id"], "word-count");
        assert_eq!(record["patch"], json!({"word_count": words}));
    }
}

#[test]
fn misbehaving_providers_fail_with_their_reason_while_the_others_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("helper.pid");
    let providers = [
        word_count(),
        misbehaving(
            "forever",
            json!({"timeout_ms": 1500, "config": {"pid_file": pid_file}}),
        ),
        misbehaving(
            "burn_cpu",
            json!({"timeout_ms": 60000, "sandbox": {"cpu_secs": 1}}),
        ),
        misbehaving("allocate", json!({"sandbox": {"address_space_mib": 200}})),
        misbehaving("spew", json!({})),
        misbehaving("not_json", json!({"max_attempts": 2})),
        misbehaving("exit_nonzero", json!({})),
        misbehaving("refuse", json!({})),
    ];
    let results = run_all(&providers);

    let (good, patches) = &results[0];
    assert_eq!(good.status, ProcessingStatus::Completed, "{good:?}");
    assert_eq!(patches, &[json!({"word_count": 3})]);

    let results: Vec<ProcessingResult> = results.into_iter().map(|(r, _)| r).collect();
    let [_, forever, burn, allocate, spew, not_json, exit, refuse]: [ProcessingResult; 8] =
        results.try_into().unwrap();
    failed_with(&forever, "timed out after 1500 ms");
    failed_with(&burn, "SIGXCPU");
    failed_with(&burn, "the CPU limit is 1 s");
    failed_with(&allocate, "MemoryError");
    failed_with(&allocate, "the address-space limit is 200 MiB");
    failed_with(&spew, "more than 16777216 bytes to standard output");
    failed_with(&not_json, "answer line 1 is not a protocol line");
    assert_eq!(not_json.attempts, 2, "retried up to max_attempts");
    failed_with(&exit, "exited with status 3");
    failed_with(&exit, "something went wrong");
    failed_with(
        &refuse,
        "the provider answered failed: cannot handle this blob",
    );

    // The whole process group was killed: the helper `forever` started is gone too.
    let helper: u32 = std::fs::read_to_string(&pid_file)
        .expect("the looping provider started its helper")
        .trim()
        .parse()
        .unwrap();
    assert!(is_gone(helper), "helper {helper} survived the group kill");
}

/// True when `pid` no longer runs (absent, or a zombie waiting for its reaper).
fn is_gone(pid: u32) -> bool {
    for _ in 0..100 {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => return true,
            Ok(stat)
                if stat
                    .rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .starts_with('Z') =>
            {
                return true;
            }
            Ok(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    false
}

#[test]
fn the_environment_is_cleared_but_for_the_allow_list_in_a_fresh_directory() {
    // Cargo sets both variables for the tests it runs; only one is allowed through.
    let allowed = "CARGO_MANIFEST_DIR";
    let denied = "CARGO_PKG_NAME";
    assert!(
        std::env::var_os(denied).is_some(),
        "the test runner sets {denied}"
    );
    let p = misbehaving(
        "environment",
        json!({"sandbox": {"env_allow": ["PATH", allowed]}}),
    );
    let results = run_all(&[p]);
    let (result, patches) = &results[0];
    assert_eq!(result.status, ProcessingStatus::Completed, "{result:?}");
    let seen = &patches[0]["sandbox"];
    let env = seen["env"].as_object().unwrap();
    let mut names: Vec<&str> = env.keys().map(String::as_str).collect();
    names.sort();
    // Python sets LC_CTYPE itself when the locale is C (PEP 538).
    names.retain(|n| *n != "LC_CTYPE");
    assert_eq!(names, ["CARGO_MANIFEST_DIR", "HOME", "PATH", "TMPDIR"]);
    assert_eq!(env[allowed], std::env::var(allowed).unwrap());
    let cwd = seen["cwd"].as_str().unwrap();
    assert_eq!(env["HOME"], cwd);
    assert_eq!(env["TMPDIR"], cwd);
    assert_eq!(seen["cwd_entries"], json!([]), "a fresh directory");
    assert!(
        !Path::new(cwd).exists(),
        "the working directory {cwd} is removed after the call"
    );
}

fn refused(policy: &Policy, def: Value) -> String {
    let p: Provider = serde_json::from_value(def).unwrap();
    policy.check(&p).unwrap_err().to_string()
}

#[test]
fn the_policy_refuses_credentials_and_api_key_variables_off_the_allow_list() {
    let policy = Policy::new(vec!["OPENAI_API_KEY".into()]).unwrap();
    let expander = |var: &str| json!({"id": "content-expander", "config": {"base_url": "http://x", "api_key_env": var}});
    let ok: Provider = serde_json::from_value(expander("OPENAI_API_KEY")).unwrap();
    policy.check(&ok).unwrap();

    let err = refused(&policy, expander("MY_OTHER_KEY"));
    assert!(err.contains("\"MY_OTHER_KEY\""), "{err}");
    assert!(
        err.contains("Add \"MY_OTHER_KEY\" to provider_runtime.api_key_env_allow"),
        "{err}"
    );
    let err = refused(&policy, expander("AWS_SECRET_ACCESS_KEY"));
    assert!(err.contains("is never given to a provider"), "{err}");

    let err = refused(
        &policy,
        json!({"id": "x", "command": ["python3"], "sandbox": {"env_allow": ["PATH", "STUDIO_API__JWT_SECRET"]}}),
    );
    assert!(
        err.contains("sandbox.env_allow names \"STUDIO_API__JWT_SECRET\""),
        "{err}"
    );
    let err = refused(
        &policy,
        json!({"id": "x", "command": ["python3"], "worker": "render-html"}),
    );
    assert!(err.contains("both `command` and `worker`"), "{err}");
    let err = refused(
        &policy,
        json!({"id": "x", "command": ["python3"], "sandbox": {"cpu_secs": 0}}),
    );
    assert!(err.contains("sandbox.cpu_secs must be at least 1"), "{err}");

    let err = Policy::new(vec!["AWS_SECRET_ACCESS_KEY".into()]).unwrap_err();
    assert!(matches!(err, Refused::Credential { .. }), "{err}");
}

#[test]
fn the_runtime_refuses_what_the_policy_refuses_and_a_missing_program() {
    let (runtime, _answers) = Runtime::new(1).unwrap();
    let expander: Provider = serde_json::from_value(
        json!({"id": "content-expander", "config": {"api_key_env": "OPENAI_API_KEY"}}),
    )
    .unwrap();
    // The default policy allows no api_key_env at all.
    assert!(runtime.register_runnable(expander.clone()).is_err());
    assert!(!runtime.register_builtin(expander));
    assert!(!runtime.runs("content-expander"));

    let missing = external("missing", vec!["no-such-program-here".into()], json!({}));
    let err = runtime.register_runnable(missing).unwrap_err().to_string();
    assert!(
        err.contains("is not on PATH; install it or give its absolute path"),
        "{err}"
    );
}
