//! The command-line interface (clap). Flags override the config file and `STUDIO_*`
//! environment variables; see `config/default.toml` for every setting.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use studio_config::{BusKind, Config};

/// Studio: a stream-processing dataflow for event-sourced documents.
#[derive(Debug, Parser)]
#[command(name = "studio", version, about, long_about = None)]
pub struct Cli {
    /// A TOML config file (defaults < file < STUDIO_* env < flags).
    #[arg(long, global = true, env = "STUDIO_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// More logging (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Log formats.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Studio's commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Replay delta logs (JSONL) into the views, as fast as the machine allows, and
    /// print a summary. Exits 0 when the replay completed, dead letters or not.
    Replay(ReplayArgs),
    /// Run the service: read deltas from Kafka or NATS, keep the views in the view
    /// store, publish requests, events, applied deltas and dead letters; recover from
    /// the delta store on start. Stops gracefully on SIGINT/SIGTERM (twice: at once).
    Run(RunArgs),
    /// Write a synthetic, valid delta log to stdout (or --out).
    Gen(GenArgs),
    /// Ask the views a question.
    Query(QueryArgs),
    /// Serve the query API over HTTP: JSON, bearer tokens (JWT HS256, secret
    /// api.jwt_secret), only blobs the caller may read (docs/access.md).
    Serve(ServeArgs),
    /// Run the built-in providers of --config: on the requests topic or subject of
    /// Kafka or NATS as one of a group of workers (--source), publishing output deltas
    /// and results; or on a request file (--requests), writing a delta log. Stops
    /// gracefully on SIGINT/SIGTERM.
    Worker(WorkerArgs),
    /// Publish a delta log, generated or your own (--log), to Kafka or NATS at a target
    /// rate, keyed by blob_id, and print what rate was achieved.
    Loadgen(LoadgenArgs),
}

/// The Redis cache of the query API, which view writers invalidate (`[redis]`).
#[derive(Debug, Args)]
pub struct CacheArgs {
    /// Redis for the query API's cache of GET /v1/blobs/{id}, which the view writer
    /// invalidates after each commit [config: redis.url].
    #[arg(long, value_name = "redis://HOST:PORT")]
    pub redis: Option<String>,
}

impl CacheArgs {
    /// Applies the flag over the file and the environment.
    pub fn apply(&self, config: &mut Config) {
        if let Some(url) = &self.redis {
            config.redis.url = url.clone();
        }
    }
}

/// `studio run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The view store: a SQLite file or postgres://... [config: run.db].
    #[arg(long, value_name = "PATH.sqlite|postgres://...")]
    pub db: Option<String>,
    /// The bus to read [config: run.source].
    #[arg(long, value_enum)]
    pub source: Option<BusKind>,
    /// Timely worker threads [config: run.workers].
    #[arg(long, short = 'w')]
    pub workers: Option<usize>,
    /// Where /metrics and /healthz are served, host:port; "" for nowhere
    /// [config: run.listen].
    #[arg(long)]
    pub listen: Option<String>,
    /// Kafka bootstrap brokers [config: kafka.brokers].
    #[arg(long, env = "KAFKA_BROKERS")]
    pub brokers: Option<String>,
    /// NATS server URL [config: nats.url].
    #[arg(long, env = "NATS_URL")]
    pub url: Option<String>,
    /// Stop gracefully once no record arrived for this many milliseconds (for batch
    /// jobs and tests).
    #[arg(long, value_name = "MS")]
    pub exit_when_idle: Option<u64>,
    /// Print the summary as JSON on stdout when stopping.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub cache: CacheArgs,
}

/// `studio worker`.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// File mode: transform requests, one JSON object per line (`studio replay
    /// --requests-out`). Without it the worker serves the bus (--source).
    #[arg(
        long,
        value_name = "FILE.jsonl",
        requires = "out",
        conflicts_with = "source"
    )]
    pub requests: Option<PathBuf>,
    /// File mode: where the output deltas go (a delta log).
    #[arg(long, value_name = "FILE.jsonl", requires = "requests")]
    pub out: Option<PathBuf>,
    /// File mode: where the processing results go, one JSON object per line.
    #[arg(long, value_name = "FILE.jsonl", requires = "requests")]
    pub results: Option<PathBuf>,
    /// Bus mode: the bus whose requests topic (Kafka) or subject (NATS) to serve, as a
    /// member of the workers' group [config: worker.source].
    #[arg(long, value_enum)]
    pub source: Option<BusKind>,
    /// Kafka bootstrap brokers [config: kafka.brokers].
    #[arg(long, env = "KAFKA_BROKERS")]
    pub brokers: Option<String>,
    /// NATS server URL [config: nats.url].
    #[arg(long, env = "NATS_URL")]
    pub url: Option<String>,
    /// The memo's SQLite file, kept across restarts; "" for a memo in memory
    /// [config: worker.memo].
    #[arg(long, value_name = "FILE.sqlite")]
    pub memo: Option<String>,
    /// Bus mode: stop gracefully once no request arrived for this many milliseconds.
    #[arg(long, value_name = "MS")]
    pub exit_when_idle: Option<u64>,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// `studio loadgen`.
#[derive(Debug, Args)]
pub struct LoadgenArgs {
    /// Where to publish.
    #[arg(long, value_enum)]
    pub to: BusKind,
    /// Target records per second; 0: as fast as the bus takes them.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Publish this delta log instead of a generated one: every line, byte for byte
    /// (malformed and empty lines too), keyed by its blob_id (empty when it has no
    /// readable one). Repeat for several files, published in the order given as one log.
    #[arg(long, value_name = "FILE.jsonl", conflicts_with_all = ["deltas", "blobs", "seed"])]
    pub log: Vec<PathBuf>,
    /// Number of valid deltas (as `studio gen --deltas`).
    #[arg(long, default_value_t = 100_000)]
    pub deltas: u64,
    /// Number of blobs.
    #[arg(long, default_value_t = 10_000)]
    pub blobs: u64,
    /// Random seed: the same flags give the same log.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Kafka bootstrap brokers [config: kafka.brokers].
    #[arg(long, env = "KAFKA_BROKERS")]
    pub brokers: Option<String>,
    /// NATS server URL [config: nats.url].
    #[arg(long, env = "NATS_URL")]
    pub url: Option<String>,
    /// The topic or subject to publish to [config: kafka.topics.deltas or
    /// nats.subjects.deltas].
    #[arg(long)]
    pub topic: Option<String>,
    /// The JetStream stream to create for it, when missing [config: nats.stream].
    #[arg(long)]
    pub stream: Option<String>,
    /// The view store of a `studio run` reading this topic: wait until it has
    /// committed every record published, and report the end-to-end latency (publish to
    /// view commit) and the sustained throughput.
    #[arg(long, value_name = "PATH.sqlite|postgres://...")]
    pub wait_db: Option<String>,
    /// Give up waiting for --wait-db after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub wait_secs: u64,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Never draw a progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

/// `studio serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The view database: a SQLite file or postgres://...
    #[arg(long, value_name = "PATH.sqlite|postgres://...")]
    pub db: String,
    /// Where to listen, HOST:PORT (port 0: any free port, printed on stderr).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Reader threads, each with its own connection to the view store.
    #[arg(long, default_value_t = 4)]
    pub readers: usize,
    #[command(flatten)]
    pub cache: CacheArgs,
}

/// `studio query`.
#[derive(Debug, Args)]
pub struct QueryArgs {
    /// The view database written by `studio replay`: a SQLite file or postgres://...
    #[arg(long, value_name = "PATH.sqlite|postgres://...")]
    pub db: String,
    /// Answer as this user: only the blobs they may read (S6.3), as the API does.
    #[arg(long = "as", value_name = "USER_ID", global = true)]
    pub as_user: Option<String>,
    /// Print JSON (one array of objects) instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    /// The question.
    #[command(subcommand)]
    pub question: Question,
}

/// Questions `studio query` answers.
#[derive(Debug, Subcommand)]
pub enum Question {
    /// Blobs, most recently updated first.
    Blobs {
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// One blob, with its document (read from wherever it is stored).
    Blob {
        /// The blob's id.
        blob_id: String,
        /// Print a presigned GET URL of the document instead (documents kept in S3;
        /// valid for content.url_expiry_secs).
        #[arg(long)]
        url: bool,
    },
    /// A blob's deltas in version order, from the delta store.
    Deltas {
        /// The blob's id.
        blob_id: String,
    },
    /// Every blob derived from BLOB_ID, at any depth, with its distance.
    Descendants {
        /// The ancestor.
        blob_id: String,
    },
    /// Every blob BLOB_ID is derived from, at any depth, with its distance.
    Ancestors {
        /// The descendant.
        blob_id: String,
    },
    /// The DAG depth of a user's tree (--user) or of one blob (--blob).
    Depth {
        /// The user whose maximum depth to show.
        #[arg(long, conflicts_with = "blob", required_unless_present = "blob")]
        user: Option<String>,
        /// The blob whose depth to show.
        #[arg(long)]
        blob: Option<String>,
    },
    /// Dead letters in log order, with the rule each broke.
    DeadLetters {
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
}

/// `studio replay`.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// Delta logs, read in the order given as one log.
    #[arg(required = true, value_name = "LOG.jsonl")]
    pub logs: Vec<PathBuf>,
    /// The view database: a SQLite file (created; its view tables are replaced) or a
    /// Postgres database, postgres://USER@HOST:PORT/DB (Studio's tables in its current
    /// schema are dropped and rebuilt).
    #[arg(long, value_name = "PATH.sqlite|postgres://...")]
    pub db: String,
    /// Timely worker threads [config: replay.workers].
    #[arg(long, short = 'w')]
    pub workers: Option<usize>,
    /// Records per dataflow timestamp [config: replay.batch_records].
    #[arg(long)]
    pub batch_records: Option<u64>,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Never draw a progress bar.
    #[arg(long)]
    pub no_progress: bool,
    /// Run the providers: once the log is applied, the built-in workers process the
    /// pending transform requests and their outputs are fed back until quiescence
    /// (providers from [[providers]] in --config and from --provider-log).
    #[arg(long)]
    pub providers: bool,
    /// More providers: one JSON definition per line (`{"remove": ID}` removes one).
    #[arg(long, value_name = "FILE.jsonl", requires = "providers")]
    pub provider_log: Option<PathBuf>,
    /// Also write each transform request, once, as a JSON line to this file.
    #[arg(long, value_name = "FILE.jsonl", requires = "providers")]
    pub requests_out: Option<PathBuf>,
    /// Run the providers to quiescence after every batch of the log (see
    /// --batch-records), as a live deployment would, instead of once at the end.
    #[arg(long, requires = "providers")]
    pub providers_each_batch: bool,
    /// Record events (S5.8) in the `events` table (always on with --providers).
    #[arg(long)]
    pub events: bool,
    /// Keep every accepted delta's full record in the delta store (`deltas.record`),
    /// as `studio run` does, so that the service can take over the database
    /// [config: replay.store_records].
    #[arg(long)]
    pub store_records: bool,
    #[command(flatten)]
    pub cache: CacheArgs,
}

/// `studio gen`.
#[derive(Debug, Args)]
pub struct GenArgs {
    /// Number of blobs.
    #[arg(long, default_value_t = 1000)]
    pub blobs: u64,
    /// Number of valid deltas (at least one create per blob).
    #[arg(long, default_value_t = 10_000)]
    pub deltas: u64,
    /// Random seed: the same flags give the same log.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Probability per delta of a re-sent copy (S4.2).
    #[arg(long, default_value_t = 0.0)]
    pub duplicate_rate: f64,
    /// Probability per delta of an extra malformed line (S1.1).
    #[arg(long, default_value_t = 0.0)]
    pub malformed_rate: f64,
    /// Shuffle lines within windows of this many (out-of-order arrival, S4.1).
    #[arg(long, default_value_t = 0)]
    pub shuffle_window: usize,
    /// Write here instead of stdout.
    #[arg(long, short = 'o')]
    pub out: Option<PathBuf>,
}
