//! The operator commands `troupe restarts` and `troupe sessions`.

use std::io::{BufRead as _, BufReader, Seek as _, SeekFrom, Write as _};
use std::path::Path;
use std::time::{Duration, SystemTime};

use troupe::restart_log::{read_all, RestartEvent, FILE_NAME};

/// Which events to show.
pub struct Filter {
    pub pool: Option<String>,
    pub session: Option<String>,
    pub since: Option<String>,
}

struct Compiled {
    pool: Option<String>,
    session: Option<String>,
    since: Option<SystemTime>,
}

impl Compiled {
    fn keeps(&self, e: &RestartEvent) -> bool {
        self.pool.as_deref().is_none_or(|p| p == e.pool)
            && self.session.as_deref().is_none_or(|s| s == e.session)
            && self.since.is_none_or(|t| e.at().is_some_and(|at| at >= t))
    }
}

fn print_event(out: &mut impl std::io::Write, e: &RestartEvent, json: bool) {
    if json {
        if let Ok(line) = serde_json::to_string(e) {
            let _ = writeln!(out, "{line}");
        }
        return;
    }
    let backoff = e
        .backoff_ms
        .map(|ms| humantime::format_duration(Duration::from_millis(ms)).to_string())
        .unwrap_or_else(|| "-".into());
    let _ = writeln!(
        out,
        "{:<24}  {:<14} {:<14} {:<12} {:>7}  {:>9}  {}",
        e.time,
        e.pool,
        e.session,
        e.event.as_str(),
        e.attempt,
        backoff,
        e.reason
    );
}

/// `troupe restarts`.
pub fn restarts(dir: &Path, filter: &Filter, follow: bool, json: bool) -> Result<(), String> {
    let since = match &filter.since {
        None => None,
        Some(s) => {
            let d = humantime::parse_duration(s).map_err(|e| format!("--since {s}: {e}"))?;
            SystemTime::now().checked_sub(d)
        }
    };
    let f = Compiled {
        pool: filter.pool.clone(),
        session: filter.session.clone(),
        since,
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if !json {
        let _ = writeln!(
            out,
            "{:<24}  {:<14} {:<14} {:<12} {:>7}  {:>9}  REASON",
            "TIME", "POOL", "SESSION", "EVENT", "ATTEMPT", "BACKOFF"
        );
    }
    let path = dir.join(FILE_NAME);
    if !follow && !path.exists() {
        return Err(format!(
            "no restart log at {} (is --data-dir right?)",
            path.display()
        ));
    }
    for e in read_all(dir).iter().filter(|e| f.keeps(e)) {
        print_event(&mut out, e, json);
    }
    let _ = out.flush();
    if !follow {
        return Ok(());
    }
    // Follow the current file; start over when it is rotated (it shrinks).
    let mut offset = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if meta.len() < offset {
            offset = 0;
        }
        if meta.len() == offset {
            continue;
        }
        let Ok(mut file) = std::fs::File::open(&path) else {
            continue;
        };
        if file.seek(SeekFrom::Start(offset)).is_err() {
            continue;
        }
        let mut reader = BufReader::new(file);
        let mut line = String::new();
        while let Ok(n) = reader.read_line(&mut line) {
            if n == 0 || !line.ends_with('\n') {
                break;
            }
            offset += n as u64;
            if let Ok(e) = serde_json::from_str::<RestartEvent>(&line) {
                if f.keeps(&e) {
                    print_event(&mut out, &e, json);
                }
            }
            line.clear();
        }
        let _ = out.flush();
    }
}

/// `troupe sessions`.
pub fn sessions(url: &str, admin_key: Option<&str>, json: bool) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let endpoint = format!("{}/admin/sessions", url.trim_end_matches('/'));
    let body: serde_json::Value = rt.block_on(async {
        let mut req = reqwest::Client::new()
            .get(&endpoint)
            .timeout(Duration::from_secs(10));
        if let Some(k) = admin_key {
            req = req.bearer_auth(k);
        }
        let resp = req.send().await.map_err(|e| format!("{endpoint}: {e}"))?;
        let status = resp.status();
        let body: serde_json::Value = resp.json().await.map_err(|e| format!("{endpoint}: {e}"))?;
        if !status.is_success() {
            let msg = body["error"]["message"].as_str().unwrap_or("").to_owned();
            return Err(format!("{endpoint} answered {status}: {msg}"));
        }
        Ok(body)
    })?;
    let list = body["sessions"].as_array().cloned().unwrap_or_default();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if json {
        for s in &list {
            let _ = writeln!(out, "{s}");
        }
        return Ok(());
    }
    // A cluster's replicas each list their own sessions.
    let clustered = list.iter().any(|s| s.get("replica").is_some());
    let replica = |s: &serde_json::Value| {
        if clustered {
            format!("{:<14} ", s["replica"].as_str().unwrap_or("-"))
        } else {
            String::new()
        }
    };
    let _ = writeln!(
        out,
        "{}{:<14} {:<14} {:<13} {:>9} {:>8}  LAST ERROR",
        if clustered { "REPLICA        " } else { "" },
        "POOL",
        "SESSION",
        "STATE",
        "LOAD",
        "RESTARTS"
    );
    for s in &list {
        let load = format!("{}/{}", s["in_flight"], s["max_concurrency"]);
        let _ = writeln!(
            out,
            "{}{:<14} {:<14} {:<13} {:>9} {:>8}  {}",
            replica(s),
            s["pool"].as_str().unwrap_or(""),
            s["session"].as_str().unwrap_or(""),
            s["state"].as_str().unwrap_or(""),
            load,
            s["restarts"],
            s["last_error"].as_str().unwrap_or("-")
        );
    }
    Ok(())
}
