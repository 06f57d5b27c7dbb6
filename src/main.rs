//! The `troupe` command: `serve` (the default) and `check`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod ops;
use troupe::config::{self, Config};

// Requests allocate many small, short-lived buffers; mimalloc serves them
// with far less bookkeeping than the system allocator.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Frees this thread's empty mimalloc pages and purges what has been free
/// long enough (mimalloc's own delay), returning it to the OS.
#[allow(unsafe_code)]
fn release_memory() {
    // SAFETY: `mi_collect` takes no pointers; it only walks the calling
    // thread's heap and mimalloc's arenas, and may be called at any time.
    unsafe { libmimalloc_sys::mi_collect(false) }
}

/// One OpenAI-compatible API in front of pools of upstream chat sessions.
#[derive(Parser)]
#[command(name = "troupe", version)]
struct Cli {
    /// Configuration file.
    #[arg(
        long,
        global = true,
        env = "TROUPE_CONFIG",
        default_value = "config/troupe.toml"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default).
    Serve,
    /// Validate the configuration and print the pools and models it serves.
    Check,
    /// Print the restart log: restarts, give-ups, cool-downs, refreshes.
    Restarts {
        /// Where the log is; default: `server.data_dir` of the configuration.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        #[arg(long)]
        pool: Option<String>,
        #[arg(long)]
        session: Option<String>,
        /// Only events newer than this (`15m`, `1h`, `2d`).
        #[arg(long)]
        since: Option<String>,
        /// Keep printing new events as they are written.
        #[arg(long, short)]
        follow: bool,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print live session states from a running gateway's admin API.
    Sessions {
        #[arg(long, default_value = "http://127.0.0.1:8317")]
        url: String,
        /// The gateway's `server.admin_key`.
        #[arg(long, env = "TROUPE_ADMIN_KEY", hide_env_values = true)]
        admin_key: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Exit 0 when `url` answers 2xx: a container health check that needs
    /// no curl in the image.
    Probe {
        #[arg(long, default_value = "http://127.0.0.1:8317/healthz")]
        url: String,
    },
}

/// GETs `url` (no proxy: it is the gateway next to us) and wants a 2xx
/// within 3 s.
fn probe(url: &str) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(std::time::Duration::from_secs(3))
            .build()
            .map_err(|e| e.to_string())?;
        let resp = client
            .get(url)
            .send()
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        match resp.status() {
            s if s.is_success() => Ok(()),
            s => Err(format!("{url} answered {}", s.as_u16())),
        }
    })
}

fn init_logging(cfg: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cfg.server.log_format {
        config::LogFormat::Json => builder.json().init(),
        config::LogFormat::Pretty => builder.init(),
    }
}

fn check(cfg: &Config) {
    println!("configuration ok");
    println!("listen: {}", cfg.server.listen);
    println!(
        "auth: {}",
        if cfg.server.api_keys.is_empty() {
            "none".to_string()
        } else {
            format!("{} key(s)", cfg.server.api_keys.len())
        }
    );
    for pool in &cfg.pools {
        let sessions = troupe::session_names(pool).len();
        println!(
            "pool {} (kind {}, {} session(s), max_concurrency {}, priority {})",
            pool.name,
            pool.kind.as_str(),
            sessions,
            pool.max_concurrency,
            pool.priority
        );
        for m in &pool.models {
            if m.public == m.upstream {
                println!("  model {}", m.public);
            } else {
                println!("  model {} -> {}", m.public, m.upstream);
            }
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let standalone = match &cli.command {
        Some(Command::Probe { url }) => Some(probe(url)),
        Some(Command::Sessions {
            url,
            admin_key,
            json,
        }) => Some(ops::sessions(url, admin_key.as_deref(), *json)),
        Some(Command::Restarts {
            data_dir,
            pool,
            session,
            since,
            follow,
            json,
        }) => {
            let dir = match data_dir {
                Some(d) => d.clone(),
                None => match config::load(&cli.config) {
                    Ok(c) => c.server.data_dir,
                    Err(_) => PathBuf::from("data"),
                },
            };
            let filter = ops::Filter {
                pool: pool.clone(),
                session: session.clone(),
                since: since.clone(),
            };
            Some(ops::restarts(&dir, &filter, *follow, *json))
        }
        _ => None,
    };
    if let Some(result) = standalone {
        return match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("troupe: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let cfg = match config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("troupe: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::Check => {
            check(&cfg);
            ExitCode::SUCCESS
        }
        Command::Probe { .. } | Command::Restarts { .. } | Command::Sessions { .. } => {
            ExitCode::SUCCESS
        }
        Command::Serve => {
            init_logging(&cfg);
            let result = actix_web::rt::System::new().block_on(troupe::server::serve(
                cfg,
                cli.config.clone(),
                Some(release_memory),
            ));
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("troupe: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
