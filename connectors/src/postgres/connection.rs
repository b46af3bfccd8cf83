//! Reaching the database: one connection at a time, bounded by a timeout, with the
//! driver's errors sorted into those that may pass and those that will not.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection};

use crate::SinkError;
use crate::open::redact;

/// Maps a driver error: connection-level failures may pass ([`SinkError::Unavailable`]).
pub(crate) fn pg_error(context: impl Into<String>) -> impl FnOnce(sqlx::Error) -> SinkError {
    let context = context.into();
    move |e| {
        let passing = match &e {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => true,
            sqlx::Error::Database(db) => db.code().is_some_and(|code| {
                // 08: connection exception; 57P0x: shutting down / cannot connect now;
                // 53: insufficient resources; 40001/40P01: serialization or deadlock.
                code.starts_with("08")
                    || code.starts_with("57P0")
                    || code.starts_with("53")
                    || code == "40001"
                    || code == "40P01"
            }),
            _ => false,
        };
        if passing {
            SinkError::Unavailable {
                context,
                source: Box::new(e),
            }
        } else {
            SinkError::Database {
                context,
                source: Box::new(e),
            }
        }
    }
}

pub(crate) fn timed_out(context: &str, after: Duration) -> SinkError {
    SinkError::Unavailable {
        context: context.to_owned(),
        source: Box::new(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer within {after:?}"),
        )),
    }
}

/// sqlx is async; the sink and reader run on plain threads, each with a small runtime.
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, SinkError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| SinkError::Database {
            context: "starting the Postgres runtime".into(),
            source: Box::new(e),
        })
}

/// Opens one connection, bounded by `timeout`.
pub(crate) async fn connect(url: &str, timeout: Duration) -> Result<PgConnection, SinkError> {
    let options = PgConnectOptions::from_str(url)
        .map_err(pg_error("bad Postgres URL"))?
        .application_name("studio")
        // Large statements are the point here, not a symptom.
        .disable_statement_logging();
    let context = format!("connecting to {}", redact(url));
    tokio::time::timeout(timeout, PgConnection::connect_with(&options))
        .await
        .map_err(|_| timed_out(&context, timeout))?
        .map_err(pg_error(context))
}

/// The sink's connection, which may have been lost: [`PgLink::get`] hands out a live
/// one, reconnecting first when the last one was dropped.
pub(crate) struct PgLink {
    url: String,
    timeout: Duration,
    /// `None` after a connection was lost; the next [`PgLink::get`] reconnects.
    conn: Option<PgConnection>,
}

impl PgLink {
    /// Not connected yet: the first [`PgLink::get`] connects.
    pub(crate) fn new(url: &str, timeout: Duration) -> Self {
        PgLink {
            url: url.to_owned(),
            timeout,
            conn: None,
        }
    }

    /// The connection, (re)connecting when there is none.
    pub(crate) async fn get(&mut self) -> Result<&mut PgConnection, SinkError> {
        let conn = match self.conn.take() {
            Some(conn) => conn,
            None => connect(&self.url, self.timeout).await?,
        };
        Ok(self.conn.insert(conn))
    }

    /// Keeps `conn`, opened elsewhere, as the connection.
    pub(crate) fn set(&mut self, conn: PgConnection) {
        self.conn = Some(conn);
    }

    /// Drops the connection, whatever state it is in: the next use starts over.
    pub(crate) fn drop_connection(&mut self) {
        self.conn = None;
    }
}
