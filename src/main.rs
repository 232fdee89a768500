//! The `edge` command: run a node, check a config, or run a demo with a bundled origin.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use edge::Node;
use edge::clock::Clock;
use edge::config::{Config, LogConfig, LogFormat};
use tokio::net::TcpListener;
use tracing::{debug, error, info, warn};
use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry, reload};

/// mimalloc: fewer bytes lost to fragmentation between long-lived cached bodies and short-lived
/// request buffers than glibc's allocator, and cheaper allocation on the request path. Its v2 line
/// (Cargo feature `v2`): with v3, the disk tier's index writes left ~0.5 KB more resident per
/// stored object (`bench/run.sh` memory test), at the same instructions per hit.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(version, about = "An HTTP caching CDN edge node (RFC 9111)")]
struct Cli {
    /// Configuration file.
    #[arg(long, short, global = true, default_value = "edge.yaml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the configuration file and exit.
    Check,
    /// Ask a running node's admin listener for /healthz: exit 0 if it answers 200 (for a
    /// container HEALTHCHECK).
    Health,
    /// Run a demo origin serving a directory at `origin.url`, with edge in front of it.
    Demo {
        /// Directory the demo origin serves.
        #[arg(long, default_value = "fixtures/www")]
        root: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(&cli.config) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("edge: invalid configuration: {err}");
            return ExitCode::from(2);
        }
    };
    let (filter, _flush_at_exit) = init_logging(&config.log);
    let format = config.log.format;
    let result = match cli.command {
        Some(Command::Check) => {
            let https = (config.tls.as_ref())
                .map_or(String::new(), |tls| format!(", https {}", tls.listen));
            let proxies = match config.proxy_protocol.len() {
                0 => String::new(),
                n => format!(", PROXY protocol from {n} network(s)"),
            };
            println!(
                "{}: ok (listen {}{https}{proxies}, origin {})",
                cli.config.display(),
                config.listen,
                config.origin.url
            );
            if let Some(problem) = disk_path_problem(&config.cache.disk.path) {
                eprintln!(
                    "edge: warning: cache.disk.path {}: {problem}; edge would run with the memory tier only",
                    config.cache.disk.path.display()
                );
            }
            Ok(())
        }
        Some(Command::Health) => return health(&config),
        Some(Command::Demo { root }) => run(config, cli.config, filter, Some(root)),
        None => run(config, cli.config, filter, None),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // As a log line where logs are JSON objects, so that the last one still parses (a
        // configuration error comes before the log format is known).
        Err(err) if format == LogFormat::Json => {
            error!(error = format!("{err:#}"), "edge cannot run");
            ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!("edge: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Handle to change the log filter on reload.
type FilterHandle = reload::Handle<EnvFilter, Registry>;

/// Logs go to stderr, as lines of key=value fields or as JSON objects (`log.format`), filtered by
/// `RUST_LOG` when it is set and by `log.filter` otherwise.
///
/// Lines are written by a background thread, so that a request never waits for stderr; none are
/// dropped (when the writer falls behind, logging waits), and the returned guard flushes them at
/// exit.
fn init_logging(log: &LogConfig) -> (Option<FilterHandle>, WorkerGuard) {
    let from_env = std::env::var("RUST_LOG").is_ok_and(|v| !v.is_empty());
    let filter = if from_env {
        EnvFilter::from_default_env()
    } else {
        EnvFilter::new(&log.filter.0)
    };
    let (filter, handle) = reload::Layer::new(filter);
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .finish(std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let fmt = match log.format {
        LogFormat::Human => fmt.boxed(),
        LogFormat::Json => fmt.json().flatten_event(true).boxed(),
    };
    tracing_subscriber::registry().with(filter).with(fmt).init();
    ((!from_env).then_some(handle), guard)
}

/// `edge health`: 0 when the admin listener answers /healthz with 200.
fn health(config: &Config) -> ExitCode {
    let mut addr = config.admin.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let url = format!("http://{addr}/healthz");
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("edge health: {err}");
            return ExitCode::FAILURE;
        }
    };
    let answer = runtime.block_on(async {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<axum::body::Body>();
        let uri = url.parse().map_err(|err| format!("{err}"))?;
        let asked = tokio::time::timeout(std::time::Duration::from_secs(3), client.get(uri));
        match asked.await {
            Ok(answer) => answer.map_err(|err| format!("{err}")),
            Err(_) => Err("no answer within 3s".to_owned()),
        }
    });
    match answer {
        Ok(response) if response.status().is_success() => {
            println!("{url}: {}", response.status());
            ExitCode::SUCCESS
        }
        Ok(response) => {
            eprintln!("edge health: {url}: {}", response.status());
            ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!("edge health: {url}: {err}");
            ExitCode::FAILURE
        }
    }
}

/// One runtime thread per CPU edge may use; on a single CPU (a container limited to one, or a
/// process pinned to one core as an nginx worker is) a current-thread runtime, which skips the
/// work-stealing machinery that one thread cannot use.
fn run(
    config: Config,
    path: PathBuf,
    filter: Option<FilterHandle>,
    demo_root: Option<PathBuf>,
) -> anyhow::Result<()> {
    raise_open_files_limit();
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let runtime = if cpus == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
    };
    runtime.block_on(serve_node(config, path, filter, demo_root))
}

/// Why the disk tier could not be kept at `path` by the user running this, if it could not: the
/// directory, or the nearest one above it that exists (edge creates the rest), must be one this
/// user may write in. A check, as `nginx -t` checks its cache path, for edge only warns at start
/// and runs with the memory tier alone.
fn disk_path_problem(path: &Path) -> Option<String> {
    use rustix::fs::{Access, access};
    let mut existing = path;
    let directory = loop {
        match std::fs::metadata(existing) {
            Ok(meta) if meta.is_dir() => break existing,
            Ok(_) => return Some(format!("{} is not a directory", existing.display())),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                existing = match existing.parent() {
                    Some(parent) if parent.as_os_str().is_empty() => Path::new("."),
                    Some(parent) => parent,
                    None => return Some(format!("{}: {err}", existing.display())),
                };
            }
            Err(err) if existing == path => return Some(err.to_string()),
            Err(err) => return Some(format!("{}: {err}", existing.display())),
        }
    };
    let err = access(directory, Access::WRITE_OK | Access::EXEC_OK).err()?;
    Some(format!(
        "{} is not writable by this user (uid {}): {}",
        directory.display(),
        rustix::process::getuid().as_raw(),
        std::io::Error::from(err)
    ))
}

/// Raises the soft limit on open files to the hard one. systemd starts services with a soft limit
/// of 1024 (and a hard one of 524288), for programs that still use `select()`, and asks those that
/// need more to raise it themselves (systemd.exec(5), `LimitNOFILE=`), as Go's runtime does: at
/// 1024, client connections, `origin.max_connections` (1024 by default) and the disk tier's files
/// share too few descriptors, and past them every origin request failed as `origin-unreachable`.
fn raise_open_files_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    // An unlimited hard limit cannot be the soft one (the kernel caps it at fs.nr_open): left as it is.
    let (Some(soft), Some(hard)) = (limit.current, limit.maximum) else {
        return;
    };
    if soft >= hard {
        return;
    }
    let raised = Rlimit {
        current: Some(hard),
        maximum: Some(hard),
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => debug!(from = soft, to = hard, "raised the open files limit"),
        Err(err) => warn!(%err, soft, hard, "cannot raise the open files limit"),
    }
}

async fn serve_node(
    config: Config,
    path: PathBuf,
    filter: Option<FilterHandle>,
    demo_root: Option<PathBuf>,
) -> anyhow::Result<()> {
    // First of all, so that a signal sent while the tiers open (seconds, when another process
    // holds the disk tier) waits for its handler instead of ending the process.
    use tokio::signal::unix::{SignalKind, signal};
    let listen = |kind: SignalKind, name: &str| {
        signal(kind).with_context(|| format!("cannot listen for {name}"))
    };
    let stop = [
        listen(SignalKind::interrupt(), "SIGINT")?,
        listen(SignalKind::terminate(), "SIGTERM")?,
        listen(SignalKind::quit(), "SIGQUIT")?,
    ];
    let hangup = listen(SignalKind::hangup(), "SIGHUP")?;
    let reopen = listen(SignalKind::user_defined1(), "SIGUSR1")?;
    if let Some(root) = demo_root {
        let url = &config.origin.url.0;
        anyhow::ensure!(
            url.scheme() == "http",
            "the demo origin speaks plain HTTP: origin.url must be http://, not {url}"
        );
        let address = format!(
            "{}:{}",
            url.host_str().unwrap_or("127.0.0.1"),
            url.port_or_known_default().unwrap_or(80)
        );
        let listener = TcpListener::bind(&address)
            .await
            .with_context(|| format!("demo origin cannot listen on {address} (origin.url)"))?;
        anyhow::ensure!(
            root.is_dir(),
            "demo origin: {} is not a directory",
            root.display()
        );
        info!(%address, root = %root.display(), "demo origin serving");
        // TCP_NODELAY, as nginx sets it: edge keeps its origin connections open, and a body
        // written after its head would otherwise wait for edge's delayed ACK.
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        tokio::spawn(async move { axum::serve(listener, edge::demo::router(root)).await });
    }
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {} (listen)", config.listen))?;
    let admin = TcpListener::bind(config.admin.listen)
        .await
        .with_context(|| format!("cannot listen on {} (admin.listen)", config.admin.listen))?;
    let tls_listen = config.tls.as_ref().map(|tls| tls.listen);
    let tls = match tls_listen {
        Some(address) => Some(
            TcpListener::bind(address)
                .await
                .with_context(|| format!("cannot listen on {address} (tls.listen)"))?,
        ),
        None => None,
    };
    let (listen, admin_listen) = (config.listen, config.admin.listen);
    let (origin, format) = (config.origin.url.clone(), config.log.format);
    let log_filter = config.log.filter.0.clone();
    let node = Node::open(config, Clock::system()).await?;
    // Once the tiers are open: the disk tier may take a while (another process holding it).
    match tls_listen {
        Some(https) => info!(%listen, %https, admin = %admin_listen, %origin, "edge serving"),
        None => info!(%listen, admin = %admin_listen, %origin, "edge serving"),
    }
    let logs = (filter, log_filter, format);
    tokio::spawn(reload_on_hangup(node.clone(), path, hangup, logs));
    tokio::spawn(ignore_reopen(reopen));
    node.serve(listener, admin, tls, shutdown_signals(node.clone(), stop))
        .await?;
    info!("edge stopped");
    Ok(())
}

/// SIGHUP: read the configuration file again and apply it (the TLS certificate and key files
/// too); a file that does not parse, or names certificate files that do not load, is rejected and
/// the running configuration stays. `logs`: the handle that changes the log filter
/// (none while `RUST_LOG` sets it), the running `log.filter`, and the log format.
async fn reload_on_hangup(
    node: Node,
    path: PathBuf,
    mut hangup: tokio::signal::unix::Signal,
    logs: (Option<FilterHandle>, String, LogFormat),
) {
    let (filter, mut log_filter, format) = logs;
    // The file as last loaded: a reload that finds it as it was says so, since a file replaced
    // under a single-file bind mount (as editors save) goes unseen.
    let mut last = std::fs::read(&path).ok();
    while hangup.recv().await.is_some() {
        let config = match Config::load(&path) {
            Ok(config) => config,
            Err(err) => {
                error!(%err, "reload rejected: keeping the running configuration");
                continue;
            }
        };
        let now = std::fs::read(&path).ok();
        let same = now.is_some() && now == last;
        last = now;
        let new_filter = config.log.filter.0.clone();
        let mut kept = node.reload(config.clone());
        if config.log.format != format {
            kept.push("log.format");
        }
        if let Some(handle) = &filter
            && let Err(err) = handle.reload(EnvFilter::new(&new_filter))
        {
            warn!(%err, "cannot change the log filter");
        }
        if filter.is_none() && new_filter != log_filter {
            warn!(log_filter = %new_filter, "log.filter changed, but RUST_LOG is set and filters the logs instead");
        }
        log_filter = new_filter;
        if !kept.is_empty() {
            warn!(path = %path.display(), unchanged = ?kept, "configuration reloaded; these settings need a restart and keep their running values");
        } else if same {
            info!(path = %path.display(), "configuration reloaded, the file as it was (its TLS files read again); a file replaced under a single-file bind mount is not seen: mount its directory");
        } else {
            info!(path = %path.display(), "configuration reloaded");
        }
    }
}

/// Completes on the first of the `stop` signals (SIGINT, SIGTERM, SIGQUIT: nginx's graceful
/// stop); a second one makes `node` stop waiting for the requests in flight, as
/// `shutdown_timeout` passing would.
fn shutdown_signals(
    node: Node,
    stop: [tokio::signal::unix::Signal; 3],
) -> impl Future<Output = ()> + Send + 'static {
    let [mut interrupt, mut terminate, mut quit] = stop;
    let (first, stopped) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut next = async || {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
                _ = quit.recv() => {}
            }
        };
        next().await;
        let _ = first.send(());
        next().await;
        warn!("a second stop signal: not waiting for the requests in flight");
        node.hurry();
    });
    async move {
        let _ = stopped.await;
    }
}

/// SIGUSR1, nginx's "reopen the log files", would end the process: edge writes its logs to
/// stderr, so it has none to reopen, and a log rotation set up as for nginx must not stop it.
async fn ignore_reopen(mut usr1: tokio::signal::unix::Signal) {
    while usr1.recv().await.is_some() {
        info!("SIGUSR1: edge logs to stderr and has no log files to reopen; ignored");
    }
}
