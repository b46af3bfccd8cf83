//! One call of an external provider: a child process under limits that the operating
//! system enforces.
//!
//! ```text
//!             +-- own process group, fresh temporary directory (HOME, TMPDIR, cwd),
//!             |   environment cleared but for the allow-list, no credentials,
//!             |   RLIMIT_CPU, RLIMIT_AS, RLIMIT_CORE = 0 (set between fork and exec)
//!  stdin  --> [ command ] --> stdout (read up to max_output_bytes)
//!                        \--> stderr (its tail, for the error message)
//!  the whole group is killed (SIGKILL) at the wall-clock deadline, past the output
//!  bound, and after the process exits (so no helper it started outlives the call)
//! ```
//!
//! Known gap: a descendant that leaves the process group (`setsid`) escapes the group
//! kill; isolating that needs namespaces or cgroups, which Studio does not set up.

use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, ChildStderr, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Resource, Rlimit, Signal, WaitId, WaitIdOptions};
use studio_model::Provider;

/// Prefixes of environment variables a provider's process never receives, whatever
/// its allow-list says: Studio's own settings (`STUDIO_API__JWT_SECRET`, database
/// URLs), cloud credentials, and the database and bus clients' variables.
pub const CREDENTIAL_PREFIXES: [&str; 8] = [
    "STUDIO_",
    "AWS_",
    "DATABASE_URL",
    "PG",
    "KAFKA_",
    "NATS_",
    "REDIS_",
    "S3_",
];

/// True when `name` is a variable no provider may receive (see [`CREDENTIAL_PREFIXES`]).
pub fn is_credential_variable(name: &str) -> bool {
    let name = name.to_ascii_uppercase();
    CREDENTIAL_PREFIXES
        .iter()
        .any(|prefix| name.starts_with(prefix))
}

/// The bytes of the standard error's tail kept for the error message.
const STDERR_TAIL_BYTES: usize = 2048;

/// The limits of one call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Wall-clock time, from the start of the process to its exit.
    pub wall: Duration,
    /// CPU seconds (`RLIMIT_CPU`).
    pub cpu_secs: u64,
    /// Address space in bytes (`RLIMIT_AS`).
    pub address_space_bytes: u64,
    /// Bytes of standard output.
    pub max_output_bytes: u64,
    /// Variables passed on from this process's environment.
    pub env_allow: Vec<String>,
}

impl Limits {
    /// The limits of `provider`: its `timeout_ms` and its `[sandbox]` table.
    pub fn of(provider: &Provider) -> Self {
        let sandbox = &provider.sandbox;
        Limits {
            wall: Duration::from_millis(provider.timeout_ms),
            cpu_secs: sandbox.cpu_secs,
            address_space_bytes: sandbox.address_space_mib.saturating_mul(1 << 20),
            max_output_bytes: sandbox.max_output_bytes,
            env_allow: sandbox.env_allow.clone(),
        }
    }
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The process could not be started.
    #[error("cannot start {program}: {error}")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        error: std::io::Error,
    },
    /// It ran past the wall-clock limit.
    #[error("timed out after {0} ms; its process group was killed")]
    Timeout(u64),
    /// It wrote more than the output bound.
    #[error(
        "wrote more than {0} bytes to standard output; its process group was killed (raise sandbox.max_output_bytes if that much is expected)"
    )]
    OutputLimit(u64),
    /// It exited unsuccessfully or was killed by a signal.
    #[error("{status}{hint}; stderr: {stderr}")]
    Exited {
        /// The exit code or signal.
        status: String,
        /// Which limit may explain it.
        hint: String,
        /// The tail of its standard error.
        stderr: String,
    },
}

/// Runs `command` with `input` on its standard input (then closed) under `limits`;
/// answers its standard output when it exits with status 0.
pub fn run(command: &[String], limits: &Limits, input: Vec<u8>) -> Result<Vec<u8>, SandboxError> {
    let deadline = Instant::now() + limits.wall;
    let program = command.first().map(String::as_str).unwrap_or("");
    let spawn_error = |error| SandboxError::Spawn {
        program: program.to_owned(),
        error,
    };
    let workdir = tempfile::Builder::new()
        .prefix("studio-provider-")
        .tempdir()
        .map_err(spawn_error)?;
    let mut child = spawn(command, limits, workdir.path()).map_err(spawn_error)?;
    let pid = Pid::from_child(&child);
    let (stdin, stdout, stderr) = (
        child.stdin.take().expect("piped"),
        child.stdout.take().expect("piped"),
        child.stderr.take().expect("piped"),
    );
    std::thread::spawn(move || {
        let mut stdin = stdin;
        // A process that exits without reading everything closes the pipe: not an error.
        let _ = stdin.write_all(&input);
    });
    let chunks = pump(stdout);
    let stderr_tail = tail(stderr);

    let outcome = read_output(&chunks, deadline, limits)
        .and_then(|output| wait_for_exit(pid, deadline, limits).map(|()| output));
    // Kill what is left of the group while its leader, not yet reaped, still holds
    // the group id (so the id cannot have been reused), then reap the leader.
    kill_group(pid);
    let status = child.wait();
    let output = outcome?;
    let status = status.map_err(spawn_error)?;
    if status.success() {
        return Ok(output);
    }
    let stderr = stderr_tail
        .recv_timeout(Duration::from_secs(1))
        .unwrap_or_default();
    Err(SandboxError::Exited {
        status: describe(status),
        hint: hint(status, &stderr, limits),
        stderr: if stderr.is_empty() {
            "(empty)".into()
        } else {
            stderr
        },
    })
}

fn spawn(command: &[String], limits: &Limits, workdir: &Path) -> std::io::Result<Child> {
    let (program, args) = command
        .split_first()
        .ok_or_else(|| std::io::Error::other("the command is empty"))?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .current_dir(workdir)
        .env_clear()
        .envs(limits.env_allow.iter().filter_map(|name| {
            let value = std::env::var_os(name)?;
            (!is_credential_variable(name)).then_some((name, value))
        }))
        .env("HOME", workdir)
        .env("TMPDIR", workdir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let (cpu_secs, address_space_bytes) = (limits.cpu_secs, limits.address_space_bytes);
    #[allow(unsafe_code)]
    // SAFETY: the hook runs in the forked child before `exec` and only makes
    // `setrlimit` system calls, which are async-signal-safe (no allocation, no lock).
    unsafe {
        cmd.pre_exec(move || set_rlimits(cpu_secs, address_space_bytes));
    }
    cmd.spawn()
}

/// In the child: the CPU limit (SIGXCPU at the soft limit, SIGKILL a second later),
/// the address-space limit, and no core dumps.
fn set_rlimits(cpu_secs: u64, address_space_bytes: u64) -> std::io::Result<()> {
    let limit = |soft, hard| Rlimit {
        current: Some(soft),
        maximum: Some(hard),
    };
    rustix::process::setrlimit(Resource::Cpu, limit(cpu_secs, cpu_secs + 1))?;
    rustix::process::setrlimit(
        Resource::As,
        limit(address_space_bytes, address_space_bytes),
    )?;
    rustix::process::setrlimit(Resource::Core, limit(0, 0))?;
    Ok(())
}

/// Reads `stdout` on a thread, chunk by chunk; the channel closes at its end.
fn pump(mut stdout: ChildStdout) -> mpsc::Receiver<Vec<u8>> {
    let (send, chunks) = mpsc::sync_channel(4);
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        while let Ok(n @ 1..) = stdout.read(&mut buf) {
            if send.send(buf[..n].to_vec()).is_err() {
                break; // the call is over
            }
        }
    });
    chunks
}

/// Reads `stderr` to its end on a thread, keeping its last bytes.
fn tail(mut stderr: ChildStderr) -> mpsc::Receiver<String> {
    let (send, tail) = mpsc::channel();
    std::thread::spawn(move || {
        let (mut kept, mut buf) = (Vec::new(), [0u8; 8192]);
        while let Ok(n @ 1..) = stderr.read(&mut buf) {
            kept.extend_from_slice(&buf[..n]);
            if kept.len() > 2 * STDERR_TAIL_BYTES {
                kept.drain(..kept.len() - STDERR_TAIL_BYTES);
            }
        }
        let start = kept.len().saturating_sub(STDERR_TAIL_BYTES);
        let _ = send.send(String::from_utf8_lossy(&kept[start..]).trim().to_owned());
    });
    tail
}

/// Standard output until it closes, within the deadline and the bound.
fn read_output(
    chunks: &mpsc::Receiver<Vec<u8>>,
    deadline: Instant,
    limits: &Limits,
) -> Result<Vec<u8>, SandboxError> {
    let mut output = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match chunks.recv_timeout(left) {
            Ok(chunk) => {
                output.extend_from_slice(&chunk);
                if output.len() as u64 > limits.max_output_bytes {
                    return Err(SandboxError::OutputLimit(limits.max_output_bytes));
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(output),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                return Err(SandboxError::Timeout(limits.wall.as_millis() as u64));
            }
        }
    }
}

/// Waits, without reaping it, until the process has exited; a timeout at the deadline.
fn wait_for_exit(pid: Pid, deadline: Instant, limits: &Limits) -> Result<(), SandboxError> {
    let mut pause = Duration::from_micros(100);
    loop {
        let exited = rustix::process::waitid(
            WaitId::Pid(pid),
            WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT,
        );
        if !matches!(exited, Ok(None)) {
            return Ok(()); // exited (or not waitable: `wait` will tell)
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(SandboxError::Timeout(limits.wall.as_millis() as u64));
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(5));
    }
}

fn kill_group(pid: Pid) {
    // ESRCH: nothing is left of the group.
    let _ = rustix::process::kill_process_group(pid, Signal::KILL);
}

fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("killed by signal {}", signal_name(signal)),
        _ => format!("ended with {status}"),
    }
}

/// Which limit may explain an unsuccessful exit: the CPU limit for SIGXCPU and
/// SIGKILL (its hard limit), the address space for a crash or an allocation failure.
fn hint(status: ExitStatus, stderr: &str, limits: &Limits) -> String {
    let signal = status.signal();
    let is = |s: Signal| signal == Some(s.as_raw());
    if is(Signal::XCPU) || is(Signal::KILL) {
        return format!(
            " (the CPU limit is {} s: raise sandbox.cpu_secs if the work needs more)",
            limits.cpu_secs
        );
    }
    let lower = stderr.to_ascii_lowercase();
    let out_of_memory = [
        "memoryerror",
        "out of memory",
        "cannot allocate",
        "bad_alloc",
    ]
    .iter()
    .any(|sign| lower.contains(sign));
    if out_of_memory || is(Signal::SEGV) || is(Signal::ABORT) {
        return format!(
            " (the address-space limit is {} MiB: raise sandbox.address_space_mib if the work needs more)",
            limits.address_space_bytes >> 20
        );
    }
    String::new()
}

fn signal_name(signal: i32) -> String {
    [
        (Signal::KILL, "SIGKILL"),
        (Signal::XCPU, "SIGXCPU"),
        (Signal::SEGV, "SIGSEGV"),
        (Signal::ABORT, "SIGABRT"),
        (Signal::TERM, "SIGTERM"),
        (Signal::PIPE, "SIGPIPE"),
    ]
    .iter()
    .find(|(s, _)| s.as_raw() == signal)
    .map(|(_, name)| (*name).to_owned())
    .unwrap_or_else(|| signal.to_string())
}
