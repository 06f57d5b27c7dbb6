//! The `troupe` command: `serve` (the default) and `check`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cli;
use troupe::config::{self, Config};

// Requests allocate many small, short-lived buffers; mimalloc serves them
// with far less bookkeeping than the system allocator.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (`mimalloc.h`; libmimalloc-sys names
/// no constant for it).
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Memory mimalloc frees goes back to the OS at once, not a second later.
///
/// A delayed purge happens only when some thread's later allocation or
/// collection comes round to it, and mimalloc skips the check in a normal
/// collection once it has found nothing to purge: after the tokenizer
/// loaded, 1.4 MiB stayed resident until the next forced collection (up to
/// 30 s later), and after a load so did pages freed last. Measured with 0:
/// RSS with token counting ready 28.8 MiB instead of 29.7 to 30.8; troupe's
/// CPU while 10,000 streams were open no higher (12 % against 16 %).
#[allow(unsafe_code)]
fn purge_at_once() {
    // SAFETY: sets a process-wide option; called first thing in `main`,
    // while no other thread exists (`mi_option_set` is not thread-safe),
    // and mimalloc reads the option on each purge.
    unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, 0) }
}

/// Frees this thread's empty mimalloc pages and purges what is free,
/// returning it to the OS (at once: [`purge_at_once`]); `force` also
/// collects the pages of exited threads.
#[allow(unsafe_code)]
fn release_memory(force: bool) {
    // SAFETY: `mi_collect` takes no pointers; it only walks the calling
    // thread's heap and mimalloc's arenas, and may be called at any time.
    unsafe { libmimalloc_sys::mi_collect(force) }
}

/// Drops this process's resident pages of `bytes`, read-only data of the
/// executable: the whole pages inside it.
#[allow(unsafe_code)]
fn forget_pages(bytes: &'static [u8]) {
    let page = rustix::param::page_size();
    let start = (bytes.as_ptr() as usize).next_multiple_of(page);
    let end = (bytes.as_ptr() as usize + bytes.len()) & !(page - 1);
    if end <= start {
        return;
    }
    // SAFETY: the range lies inside `bytes`, embedded read-only data of the
    // executable: a private file mapping that is never written. There,
    // MADV_DONTNEED only drops the pages from this process; a later read
    // faults them in again from the file, with the same content.
    let _ = unsafe {
        rustix::mm::madvise(
            start as *mut std::ffi::c_void,
            end - start,
            rustix::mm::Advice::LinuxDontNeed,
        )
    };
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

fn main() -> ExitCode {
    purge_at_once();
    let cli = Cli::parse();
    let standalone = match &cli.command {
        Some(Command::Probe { url }) => Some(cli::probe(url)),
        Some(Command::Sessions {
            url,
            admin_key,
            json,
        }) => Some(cli::ops::sessions(url, admin_key.as_deref(), *json)),
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
                None => match troupe::app::load_config(&cli.config) {
                    Ok(c) => c.server.data_dir,
                    Err(_) => PathBuf::from("data"),
                },
            };
            let filter = cli::ops::Filter {
                pool: pool.clone(),
                session: session.clone(),
                since: since.clone(),
            };
            Some(cli::ops::restarts(&dir, &filter, *follow, *json))
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
    let cfg = match troupe::app::load_config(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("troupe: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::Check => {
            cli::check(&cfg);
            ExitCode::SUCCESS
        }
        Command::Probe { .. } | Command::Restarts { .. } | Command::Sessions { .. } => {
            ExitCode::SUCCESS
        }
        Command::Serve => {
            init_logging(&cfg);
            let result = actix_web::rt::System::new().block_on(troupe::app::serve(
                cfg,
                cli.config.clone(),
                Some(troupe::app::MemoryHooks {
                    release: release_memory,
                    forget: forget_pages,
                }),
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

#[cfg(test)]
mod tests {
    #[test]
    #[allow(unsafe_code)]
    fn purge_delay_is_the_option_it_names() {
        // 1000 ms is mimalloc's default purge delay, and no other option's
        // default: a wrong number would set some other option.
        // SAFETY: reads an option; no pointers.
        let v = unsafe { libmimalloc_sys::mi_option_get(super::PURGE_DELAY) };
        assert_eq!(v, 1000);
    }
}
