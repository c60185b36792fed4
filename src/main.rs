//! The `pullthrough` binary: parses flags, sets up logging, and runs the
//! chosen command.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bytesize::ByteSize;
use clap::{Parser, Subcommand};
use pullthrough::cli::check::check;
use pullthrough::config::{Config, LogFormat, Overrides, parse_upstream_flag};
use pullthrough::server;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "pullthrough",
    version,
    about = "A pull-through caching registry mirror"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the registry mirror.
    Serve(ServeArgs),
    /// Print the effective configuration as TOML (credentials redacted) and exit.
    Config(ConfigArgs),
    /// Show a running mirror's status: hit ratio, pulls, budgets, cache, hottest images, errors.
    Status(StatusArgs),
    /// Pre-pull images into a running mirror through its registry API.
    Warm(WarmArgs),
    /// Check the upstreams, S3 and the data directory of the configuration `serve` would use.
    Doctor(DoctorArgs),
}

#[derive(clap::Args)]
struct StatusArgs {
    /// The mirror's base URL.
    #[arg(long, env = "PULLTHROUGH_URL", default_value = "http://127.0.0.1:5000")]
    url: String,
    /// Print the status as JSON, for scripts.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct WarmArgs {
    /// Images such as nginx:1.27, ghcr.io/org/app:1 or name@sha256:...
    images: Vec<String>,
    /// The mirror's base URL.
    #[arg(long, env = "PULLTHROUGH_URL", default_value = "http://127.0.0.1:5000")]
    url: String,
    /// The platform to pull from multi-platform images [default: this machine's, linux/<arch>].
    #[arg(
        long,
        value_name = "OS/ARCH[/VARIANT]",
        conflicts_with = "all_platforms"
    )]
    platform: Option<String>,
    /// Pull every platform of multi-platform images.
    #[arg(long)]
    all_platforms: bool,
    /// Pin each image so eviction never takes it.
    #[arg(long)]
    pin: bool,
    /// Read more images from a file, one per line (`#` starts a comment).
    #[arg(long)]
    file: Option<PathBuf>,
}

#[derive(clap::Args)]
struct ConfigArgs {
    #[command(flatten)]
    serve: ServeArgs,
    /// Only check the configuration (the file, the variables and flags, the
    /// TLS files it names): print one line, and exit non-zero naming the bad field.
    #[arg(long)]
    check: bool,
}

#[derive(clap::Args)]
struct DoctorArgs {
    #[command(flatten)]
    serve: ServeArgs,
    /// Check only this upstream (by name, such as docker.io).
    #[arg(long, value_name = "NAME")]
    only: Option<String>,
}

/// Every flag can also be set by its `PULLTHROUGH_*` variable or in the file.
#[derive(clap::Args)]
struct ServeArgs {
    /// TOML configuration file; without one the embedded default applies.
    #[arg(long, env = "PULLTHROUGH_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on [default: 0.0.0.0:5000].
    #[arg(long, env = "PULLTHROUGH_LISTEN")]
    listen: Option<std::net::SocketAddr>,
    /// Directory for the disk cache and tag records [default: ./pullthrough-data].
    #[arg(long, env = "PULLTHROUGH_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// An upstream as NAME=URL; repeat for more (comma-separated in the variable).
    #[arg(long = "upstream", env = "PULLTHROUGH_UPSTREAM", value_delimiter = ',', value_parser = parse_upstream_flag)]
    upstreams: Vec<(String, String)>,
    /// How long a tag is trusted before revalidation, such as 30s or 5m [default: 5m].
    #[arg(long, env = "PULLTHROUGH_TAG_TTL", value_parser = humantime::parse_duration)]
    tag_ttl: Option<Duration>,
    /// Size of the memory tier, such as 256MiB [default: 256MiB].
    #[arg(long, env = "PULLTHROUGH_MEMORY_MAX_BYTES")]
    memory_max_bytes: Option<ByteSize>,
    /// Cap on the disk tier's bytes, such as 20GiB [default: none, only --disk-max-percent].
    #[arg(long, env = "PULLTHROUGH_DISK_MAX_BYTES")]
    disk_max_bytes: Option<ByteSize>,
    /// Keep the data directory's file system at most this percent full [default: 80].
    #[arg(long, env = "PULLTHROUGH_DISK_MAX_PERCENT")]
    disk_max_percent: Option<u8>,
    /// Log line format [default: text].
    #[arg(long, env = "PULLTHROUGH_LOG_FORMAT")]
    log_format: Option<LogFormat>,
    /// Upstream connect timeout [default: 5s].
    #[arg(long, env = "PULLTHROUGH_CONNECT_TIMEOUT", value_parser = humantime::parse_duration)]
    connect_timeout: Option<Duration>,
    /// Upstream read timeout: longest silence within a response [default: 30s].
    #[arg(long, env = "PULLTHROUGH_READ_TIMEOUT", value_parser = humantime::parse_duration)]
    read_timeout: Option<Duration>,
    /// S3 bucket of the shared tier, which every replica uses [default: none, tier off].
    #[arg(long, env = "PULLTHROUGH_S3_BUCKET")]
    s3_bucket: Option<String>,
    /// Key prefix inside the bucket, such as `pullthrough/`.
    #[arg(long, env = "PULLTHROUGH_S3_PREFIX")]
    s3_prefix: Option<String>,
    /// S3-compatible endpoint (MinIO and others), used path-style.
    #[arg(long, env = "PULLTHROUGH_S3_ENDPOINT")]
    s3_endpoint: Option<String>,
    /// AWS region of the bucket [default: from AWS_REGION].
    #[arg(long, env = "PULLTHROUGH_S3_REGION")]
    s3_region: Option<String>,
    /// Size of each ranged GET when reading a blob from S3 [default: 8MiB].
    #[arg(long, env = "PULLTHROUGH_S3_READ_PART_SIZE")]
    s3_read_part_size: Option<ByteSize>,
    /// Ranged GETs in flight per blob read from S3 [default: 8].
    #[arg(long, env = "PULLTHROUGH_S3_READ_CONCURRENCY")]
    s3_read_concurrency: Option<usize>,
    /// Send nodes to the bucket for warm blobs of 1 MiB or more (a redirect to
    /// a presigned URL) instead of streaming them [default: false].
    #[arg(long, env = "PULLTHROUGH_S3_REDIRECT", num_args = 0..=1, default_missing_value = "true")]
    s3_redirect: Option<bool>,
    /// The S3 endpoint nodes reach the bucket at, when not the replicas' one.
    #[arg(long, env = "PULLTHROUGH_S3_PUBLIC_ENDPOINT")]
    s3_public_endpoint: Option<String>,
    /// The replicas of this mirror, this one included: URLs, or one
    /// dns:NAME:PORT (comma-separated in the variable) [default: none].
    #[arg(long, env = "PULLTHROUGH_PEERS", value_delimiter = ',')]
    peers: Vec<String>,
    /// This replica's URL as its peers reach it [default: from POD_IP or ECS metadata].
    #[arg(long, env = "PULLTHROUGH_ADVERTISE")]
    advertise: Option<String>,
}

impl ServeArgs {
    fn load(self) -> Result<Config, pullthrough::config::ConfigError> {
        let overrides = Overrides {
            listen: self.listen,
            data_dir: self.data_dir,
            tag_ttl: self.tag_ttl,
            upstreams: self.upstreams,
            memory_max_bytes: self.memory_max_bytes,
            disk_max_bytes: self.disk_max_bytes,
            disk_max_percent: self.disk_max_percent,
            log_format: self.log_format,
            connect_timeout: self.connect_timeout,
            read_timeout: self.read_timeout,
            s3_bucket: self.s3_bucket,
            s3_prefix: self.s3_prefix,
            s3_endpoint: self.s3_endpoint,
            s3_region: self.s3_region,
            s3_read_part_size: self.s3_read_part_size,
            s3_read_concurrency: self.s3_read_concurrency,
            s3_redirect: self.s3_redirect,
            s3_public_endpoint: self.s3_public_endpoint,
            peers: self.peers,
            advertise: self.advertise,
        };
        Config::load(self.config.as_deref(), overrides, |k| std::env::var(k).ok())
    }
}

mod ops;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (args, serve) = match cli.command {
        Command::Serve(args) => (args, true),
        Command::Config(args) if args.check => {
            let file = args.serve.config.clone();
            return match check(file.as_deref(), args.serve.load()) {
                Ok(verdict) => {
                    println!("{verdict}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("pullthrough: {e}");
                    ExitCode::from(2)
                }
            };
        }
        Command::Config(args) => (args.serve, false),
        Command::Status(args) => return ops::status(args.url, args.json),
        Command::Warm(args) => return ops::warm(args),
        Command::Doctor(args) => {
            return match args.serve.load() {
                Ok(config) => ops::doctor(&config, args.only.as_deref()),
                Err(e) => {
                    eprintln!("pullthrough: invalid configuration: {e}");
                    ExitCode::from(2)
                }
            };
        }
    };
    let config = match args.load() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("pullthrough: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    if !serve {
        return match config.to_toml() {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("pullthrough: cannot print the configuration: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let _log_flush = match init_logging(config.log_format) {
        Ok(flush) => flush,
        Err(e) => {
            eprintln!("pullthrough: cannot start the log writer: {e}");
            return ExitCode::FAILURE;
        }
    };
    raise_open_file_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // Blocking work is file work on a pool of 16 (see `cache`), plus the
        // odd DNS lookup: a burst of requests must never become a burst of
        // threads.
        .max_blocking_threads(BLOCKING_THREADS)
        .build()
        .expect("tokio runtime");
    let served = runtime.block_on(serve_until_signal(&config));
    // Downloads cut off by the drain still hold a thread or a task: they
    // stop with the runtime, and only then is `tmp/` certainly idle.
    runtime.shutdown_timeout(Duration::from_secs(2));
    match server::clear_unfinished_downloads(&config) {
        Ok(0) => {}
        Ok(removed) => tracing::info!(removed, "cleared unfinished downloads"),
        Err(e) => tracing::warn!(error = %e, "could not clear unfinished downloads"),
    }
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("pullthrough: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Every client connection is a file descriptor, and a rollout brings
/// thousands at once: the soft limit (often 1024) is raised to the hard one,
/// as Go servers do at start.
fn raise_open_file_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "open file limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open file limit"),
    }
}

/// The most threads tokio may start for blocking work.
const BLOCKING_THREADS: usize = 32;

async fn serve_until_signal(config: &Config) -> Result<(), Box<dyn std::error::Error>> {
    let listening = pullthrough::listen::Listening::from_config(config)?;
    let listener = server::bind(config)?;
    let starting = server::serve_while_starting(&listener, &listening)?;
    let state = server::build_state(config).await?;
    starting.finish(pullthrough::api::router(state.clone()));
    tracing::info!(
        listen = %listener.local_addr()?,
        tls = listening.is_tls(),
        data_dir = %config.data_dir.display(),
        upstreams = ?config.upstreams.iter().filter(|(_, u)| u.enabled).map(|(n, u)| format!("{n}={}", u.url)).collect::<Vec<_>>(),
        "pullthrough serving"
    );
    server::run(listener, state, listening, shutdown_signal()).await?;
    tracing::info!("pullthrough stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("signal handler");
    tokio::select! {
        _ = ctrl_c => {},
        _ = term.recv() => {},
    }
}

/// Logs go to stdout through a background writer (see
/// [`pullthrough::logsink`]), so a slow terminal or pipe never holds up a
/// request: lines gather for a few milliseconds and go out with one system
/// call. `PULLTHROUGH_LOG` (or `RUST_LOG`) filters.
fn init_logging(format: LogFormat) -> std::io::Result<pullthrough::logsink::Flush> {
    let filter = EnvFilter::try_from_env("PULLTHROUGH_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, flush) = pullthrough::logsink::LogSink::spawn(std::io::stdout())?;
    // Colour only for a terminal: log files and collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(flush)
}
