//! The `edge` command: run a node, check a config, or run a demo with a bundled origin.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use edge::clock::Clock;
use edge::config::Config;
use tokio::net::TcpListener;
use tracing::info;
use tracing_subscriber::EnvFilter;

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
    /// Run a demo origin serving a directory at `origin.url`, with edge in front of it.
    Demo {
        /// Directory the demo origin serves.
        #[arg(long, default_value = "fixtures/www")]
        root: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = match Config::load(&cli.config) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("edge: invalid configuration: {err}");
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Some(Command::Check) => {
            println!(
                "{}: ok (listen {}, origin {})",
                cli.config.display(),
                config.listen,
                config.origin.url
            );
            Ok(())
        }
        Some(Command::Demo { root }) => run(config, Some(root)),
        None => run(config, None),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("edge: {err:#}");
            ExitCode::FAILURE
        }
    }
}

#[tokio::main]
async fn run(config: Config, demo_root: Option<PathBuf>) -> anyhow::Result<()> {
    if let Some(root) = demo_root {
        let url = &config.origin.url.0;
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
        tokio::spawn(async move { axum::serve(listener, edge::demo::router(root)).await });
    }
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {} (listen)", config.listen))?;
    let admin = TcpListener::bind(config.admin.listen)
        .await
        .with_context(|| format!("cannot listen on {} (admin.listen)", config.admin.listen))?;
    info!(listen = %config.listen, admin = %config.admin.listen, origin = %config.origin.url, "edge serving");
    edge::serve(config, Clock::system(), listener, admin, shutdown_signal()).await?;
    info!("edge stopped");
    Ok(())
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}
