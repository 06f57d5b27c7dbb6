//! The subcommands besides `serve`: `check`, `probe`, and the operator
//! commands `restarts` and `sessions` ([`ops`]).

pub mod ops;

use troupe::config::Config;

/// GETs `url` (no proxy: it is the gateway next to us) and wants a 2xx
/// within 3 s.
pub fn probe(url: &str) -> Result<(), String> {
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

pub fn check(cfg: &Config) {
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
