//! The real services the tests use: a Kafka-compatible broker (`KAFKA_BROKERS`), NATS
//! JetStream (`NATS_URL`), PostgreSQL (`DATABASE_URL`) and an S3-compatible server
//! (`S3_ENDPOINT`, with `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`). A variable that is
//! set wins; otherwise the service is started on loopback for the test run (installed
//! when missing) and stopped when the run ends: see [`studio_test_env`].
//!
//! A test that needs a service it cannot get **fails**, saying what to do; it never
//! skips. Each test gets a database (or bucket) of its own,
//! so tests run in parallel. [`FlakyProxy`] sits between Studio and a service and can
//! cut every connection and refuse new ones, then let them through again: an outage
//! of that service as Studio sees it, without stopping a server other tests share.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use sqlx::Connection;
pub use studio_test_env::{OwnServices, program, service_env};

const HOW: &str = "is the server at that address running? Unset the variable and the \
                   tests start their own (see .ci/services.sh)";

/// The same as [`service_env`] (the name callers used when a missing variable failed
/// the test).
pub fn required_env(name: &str) -> String {
    service_env(name)
}

/// A unique lowercase name: `prefix_pid_counter_nanos`.
pub fn unique_name(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    format!(
        "{prefix}_{}_{}_{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// `DATABASE_URL` with its database replaced by `db`.
pub fn with_database(url: &str, db: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let base = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}

/// The `host:port` of a URL.
pub fn host_port(url: &str) -> SocketAddr {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let hostport = rest.split(['/', '?']).next().unwrap_or(rest);
    use std::net::ToSocketAddrs;
    hostport
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .unwrap_or_else(|| panic!("cannot resolve {hostport}"))
}

/// The URL with its `host:port` replaced by `addr`.
pub fn with_host_port(url: &str, addr: SocketAddr) -> String {
    let old = host_port(url);
    let port = format!(":{}", old.port());
    let start = url.find("://").map_or(0, |i| i + 3);
    let start = url[start..].rfind('@').map_or(start, |i| start + i + 1);
    let end = url[start..]
        .find(&port)
        .map(|i| start + i + port.len())
        .expect("url has a port");
    format!("{}{addr}{}", &url[..start], &url[end..])
}

fn block_on<T>(f: impl Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

/// A new, empty database on the `DATABASE_URL` server; returns its URL.
pub fn fresh_database(prefix: &str) -> String {
    let url = service_env("DATABASE_URL");
    let name = unique_name(prefix);
    block_on(async {
        let mut conn = sqlx::PgConnection::connect(&url)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to DATABASE_URL={url}: {e}; {HOW}"));
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .expect("create a test database");
    });
    with_database(&url, &name)
}

/// Runs one statement on `url` and returns the first column of every row as text.
pub fn pg_texts(url: &str, sql: &str) -> Vec<String> {
    block_on(async {
        let mut conn = sqlx::PgConnection::connect(url).await.expect("connect");
        sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql.to_owned()))
            .fetch_all(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    })
}

/// Runs statements on `url`.
pub fn pg_execute(url: &str, sql: &str) {
    block_on(async {
        let mut conn = sqlx::PgConnection::connect(url).await.expect("connect");
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    })
}

/// The S3 endpoint (`S3_ENDPOINT`), after checking the credentials are set too (they
/// are when the server was started for the run).
pub fn s3_endpoint() -> String {
    let endpoint = service_env("S3_ENDPOINT");
    for key in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] {
        assert!(
            std::env::var(key).is_ok_and(|v| !v.is_empty()),
            "S3_ENDPOINT={endpoint} is given but {key} is not: set it (moto takes any, \
             e.g. test), or unset S3_ENDPOINT and the tests start their own"
        );
    }
    endpoint
}

/// A new bucket name (S3 rules: lowercase, digits, hyphens).
pub fn fresh_bucket(prefix: &str) -> String {
    unique_name(prefix).replace('_', "-")
}

/// A TCP proxy to a service that can cut and refuse connections on demand.
pub struct FlakyProxy {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
    refused: Arc<AtomicU64>,
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = [0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}

impl FlakyProxy {
    /// Listens on a free loopback port and forwards to `target` while up.
    pub fn start(target: SocketAddr) -> FlakyProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let proxy = FlakyProxy {
            addr,
            up: Arc::new(AtomicBool::new(true)),
            open: Arc::default(),
            refused: Arc::default(),
        };
        let (up, open, refused) = (
            Arc::clone(&proxy.up),
            Arc::clone(&proxy.open),
            Arc::clone(&proxy.refused),
        );
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if !up.load(Ordering::SeqCst) {
                    refused.fetch_add(1, Ordering::Relaxed);
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(target) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                {
                    let mut open = open.lock().expect("lock");
                    open.push(client.try_clone().expect("clone"));
                    open.push(server.try_clone().expect("clone"));
                }
                let (c2, s2) = (
                    client.try_clone().expect("clone"),
                    server.try_clone().expect("clone"),
                );
                std::thread::spawn(move || pipe(client, server));
                std::thread::spawn(move || pipe(s2, c2));
            }
        });
        proxy
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The outage begins: every open connection is cut, new ones are refused.
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for stream in self.open.lock().expect("lock").drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// The outage ends.
    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }

    /// Connections refused during outages.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let url = "postgres://postgres@127.0.0.1:15432/postgres?sslmode=disable";
        assert_eq!(
            with_database(url, "t1"),
            "postgres://postgres@127.0.0.1:15432/t1?sslmode=disable"
        );
        assert_eq!(host_port(url).port(), 15432);
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        assert_eq!(
            with_host_port(url, addr),
            "postgres://postgres@127.0.0.1:9/postgres?sslmode=disable"
        );
        assert_eq!(
            with_host_port("http://127.0.0.1:15000", addr),
            "http://127.0.0.1:9"
        );
    }
}
