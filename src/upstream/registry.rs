//! The one place that lists the upstream kinds: one line each. The pool
//! supervisor, `troupe check`, configuration loading (and so reload) and
//! shutdown ask it, so no rule about a kind exists twice.

use std::sync::Arc;

use super::{Place, Upstream, UpstreamContext};
use crate::canonical::{Speaks, Wire};
use crate::config::{invalid, ConfigError, KindCheck, PoolConfig};

/// Builds the upstream of one session.
type Build = fn(UpstreamContext<'_>, &Place<'_>) -> Result<Arc<dyn Upstream>, String>;

/// What the gateway needs to know of a kind.
pub(crate) struct KindSpec {
    /// The name a pool's `kind` gives.
    kind: &'static str,
    /// Reads and checks a pool's own keys (errors name the dotted key).
    check: KindCheck,
    build: Build,
    /// Sessions a pool without accounts runs (0: its sessions are its accounts).
    sessions: fn(&PoolConfig) -> u32,
    /// Run when the gateway stops, for kinds that leave processes.
    shutdown: Option<fn()>,
    /// What a pool's upstream takes: a protocol's whole request, or text.
    speaks: fn(&PoolConfig) -> Speaks,
}

/// Text kinds take the conversation (and tools, through the tool layer).
fn text(_: &PoolConfig) -> Speaks {
    Speaks::Text { honours: &[] }
}

/// The demo honours a length limit and stop sequences too.
fn demo(_: &PoolConfig) -> Speaks {
    Speaks::Text {
        honours: &[
            "max_tokens",
            "max_completion_tokens",
            "max_output_tokens",
            "stop",
            "stop_sequences",
        ],
    }
}

fn anthropic(_: &PoolConfig) -> Speaks {
    Speaks::Wire(Wire::AnthropicMessages)
}

#[rustfmt::skip]
static KINDS: [KindSpec; 8] = [
    KindSpec { kind: "demo", check: super::demo::config::validate, build: |ctx, _| Ok(Arc::new(super::demo::Demo::new(ctx.pool)?)), sessions: super::demo::config::sessions, shutdown: None, speaks: demo },
    KindSpec { kind: "openai", check: super::openai::config::validate, build: |ctx, _| Ok(Arc::new(super::openai::OpenAi::new(&ctx)?)), sessions: per_account, shutdown: None, speaks: super::openai::config::speaks },
    KindSpec { kind: "anthropic", check: super::anthropic::config::validate, build: |ctx, _| Ok(Arc::new(super::anthropic::Anthropic::new(&ctx)?)), sessions: per_account, shutdown: None, speaks: anthropic },
    KindSpec { kind: "ondemand", check: super::ondemand::config::validate, build: |ctx, _| Ok(Arc::new(super::ondemand::OnDemand::new(&ctx)?)), sessions: per_account, shutdown: None, speaks: text },
    KindSpec { kind: "langgraph", check: super::langgraph::config::validate, build: |ctx, _| Ok(Arc::new(super::langgraph::LangGraph::new(&ctx)?)), sessions: super::langgraph::config::sessions, shutdown: None, speaks: text },
    KindSpec { kind: "socketio", check: super::socketio::config::validate, build: |ctx, _| Ok(Arc::new(super::socketio::SocketIo::new(&ctx)?)), sessions: super::socketio::config::sessions, shutdown: None, speaks: text },
    KindSpec { kind: "cli", check: super::cli::config::validate, build: |ctx, _| Ok(Arc::new(super::cli::Cli::new(&ctx)?)), sessions: super::cli::config::sessions, shutdown: None, speaks: text },
    KindSpec { kind: "lingma", check: super::lingma::config::validate, build: |ctx, place| Ok(Arc::new(super::lingma::Lingma::new(&ctx, place)?)), sessions: super::lingma::config::sessions, shutdown: Some(super::lingma::kill_all_agents), speaks: text },
];

/// For kinds whose sessions are their accounts.
fn per_account(_: &PoolConfig) -> u32 {
    0
}

fn spec(kind: &str) -> Option<&'static KindSpec> {
    KINDS.iter().find(|s| s.kind == kind)
}

/// Checks that `pool`'s kind is known and its own keys (the configuration
/// loader's [`crate::config::KindCheck`]).
pub fn check_pool(pool: &mut PoolConfig, at: &dyn Fn(&str) -> String) -> Result<(), ConfigError> {
    let Some(spec) = spec(&pool.kind) else {
        let known: Vec<&str> = KINDS.iter().map(|s| s.kind).collect();
        return Err(invalid(
            at("kind"),
            format!("unknown kind `{}` (known: {})", pool.kind, known.join(", ")),
        ));
    };
    (spec.check)(pool, at)
}

/// The sessions a pool runs: one per account, or `POOL-1..n` for kinds that
/// need none. The pool supervisor starts these and `troupe check` prints
/// them.
pub fn session_names(pool: &PoolConfig) -> Vec<String> {
    if !pool.accounts.is_empty() {
        return pool.accounts.iter().map(|a| a.name.clone()).collect();
    }
    let n = spec(&pool.kind).map_or(0, |s| (s.sessions)(pool));
    (1..=n).map(|i| format!("{}-{i}", pool.name)).collect()
}

/// Builds the upstream of session `place`.
pub(crate) fn build(
    ctx: UpstreamContext<'_>,
    place: &Place<'_>,
) -> Result<Arc<dyn Upstream>, String> {
    match spec(&ctx.pool.kind) {
        Some(s) => (s.build)(ctx, place),
        None => Err(format!("unknown kind `{}`", ctx.pool.kind)),
    }
}

/// What a pool's upstream takes (text for a kind not listed, which a
/// loaded configuration never has).
pub(crate) fn speaks(pool: &PoolConfig) -> Speaks {
    spec(&pool.kind).map_or(text(pool), |s| (s.speaks)(pool))
}

/// Runs every kind's shutdown hook: no process a kind started outlives the
/// gateway.
pub(crate) fn shutdown() {
    for s in &KINDS {
        if let Some(hook) = s.shutdown {
            hook();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use serde_json::{json, Value};

    /// Loads a configuration as the gateway does: each pool's own keys
    /// checked by its kind.
    fn load_value(v: Value) -> Result<Config, ConfigError> {
        crate::config::from_value(v, check_pool)
    }

    fn demo_pool() -> Value {
        json!({"name": "demo", "kind": "demo", "models": ["demo", "fast=demo"]})
    }

    #[test]
    fn every_kind_has_exactly_one_line() {
        for spec in &KINDS {
            let lines = KINDS.iter().filter(|s| s.kind == spec.kind).count();
            assert_eq!(lines, 1, "{}", spec.kind);
        }
        let e = load_value(json!({"pools": [{"name": "x", "kind": "telnet", "models": ["m"]}]}))
            .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("pools[0].kind: unknown kind `telnet`"),
            "{e}"
        );
    }

    #[test]
    fn a_key_of_another_kind_is_named() {
        for (kind, key) in [
            ("demo", "preset"),
            ("openai", "chunk_delay"),
            ("cli", "anon_key"),
            ("cli", "acounts"),
        ] {
            let mut pool = json!({"name": "x", "kind": kind, "models": ["m"],
                "accounts": [{"name": "a", "api_key": "k"}], key: "v"});
            if kind == "openai" {
                pool["base_url"] = json!("https://127.0.0.1/v1");
            }
            if kind == "cli" {
                pool["preset"] = json!("claude");
                pool["accounts"] = json!([]);
            }
            let e = load_value(json!({ "pools": [pool] })).unwrap_err();
            assert!(
                e.to_string()
                    .starts_with(&format!("pools[0].{key}: unknown field")),
                "{kind}: {e}"
            );
        }
    }

    #[test]
    fn validation_names_the_key() {
        let e = load_value(json!({"pools": [{"name": "o", "kind": "openai", "models": ["m"]}]}))
            .unwrap_err();
        assert!(e.to_string().starts_with("pools[0].base_url:"), "{e}");
        let e = load_value(json!({"server": {"request_timeout": "soon"}, "pools": [demo_pool()]}))
            .unwrap_err();
        assert!(e.to_string().starts_with("server.request_timeout:"), "{e}");
        let e = load_value(json!({"pools": [demo_pool(), demo_pool()]})).unwrap_err();
        assert!(e.to_string().starts_with("pools[1].name:"), "{e}");
        // A base_url the sessions could not use is refused at load.
        for bad in [
            "ftp://h/v1",
            "http://",
            "https://bad host/v1",
            "https://ünï.example/v1",
        ] {
            let e = load_value(
                json!({"pools": [{"name": "o", "kind": "openai", "base_url": bad,
                "models": ["m"], "accounts": [{"name": "a", "api_key": "k"}]}]}),
            )
            .unwrap_err();
            assert!(
                e.to_string().starts_with("pools[0].base_url:"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn anthropic_pools_validate_like_openai_ones() {
        let pool = |base: &str, accounts: Value| {
            json!({"pools": [{"name": "a", "kind": "anthropic", "base_url": base,
                "models": ["claude"], "accounts": accounts}]})
        };
        let key = json!([{"name": "k", "api_key": "sk-ant"}]);
        let cfg = load_value(pool("https://api.anthropic.com", key.clone())).unwrap();
        assert_eq!(cfg.pools[0].kind, "anthropic");
        let e = load_value(pool("https://api.anthropic.com/v1", key.clone())).unwrap_err();
        assert!(e.to_string().starts_with("pools[0].base_url:"), "{e}");
        let e = load_value(pool("https://api.anthropic.com", json!([]))).unwrap_err();
        assert!(e.to_string().starts_with("pools[0].accounts:"), "{e}");
        let e = load_value(pool("https://api.anthropic.com", json!([{"name": "k"}]))).unwrap_err();
        assert!(
            e.to_string().starts_with("pools[0].accounts[0].api_key:"),
            "{e}"
        );
        let e = load_value(json!({"pools": [{"name": "a", "kind": "anthropic", "models": ["c"]}]}))
            .unwrap_err();
        assert!(
            e.to_string().contains("the anthropic kind needs base_url"),
            "{e}"
        );
    }

    #[test]
    fn ondemand_pools_need_endpoint_ids_and_keep_their_keys() {
        let pool = |extra: Value| {
            let mut p = json!({"name": "od", "kind": "ondemand", "models": ["gpt-4o"],
                "accounts": [{"name": "k", "api_key": "x"}]});
            if let (Some(p), Some(e)) = (p.as_object_mut(), extra.as_object()) {
                p.extend(e.clone());
            }
            json!({"pools": [p]})
        };
        let cfg = load_value(pool(json!({"response_mode": "sync"}))).unwrap();
        assert_eq!(cfg.pools[0].kind.as_str(), "ondemand");
        let own: crate::upstream::ondemand::config::Settings =
            cfg.pools[0].settings(&|k| k.to_owned()).unwrap();
        assert_eq!(
            own.response_mode,
            crate::upstream::ondemand::config::ResponseMode::Sync
        );
        load_value(pool(json!({"models": ["predefined-xai-grok3"]}))).unwrap();
        load_value(pool(
            json!({"models": ["mine"], "endpoints": {"mine": "custom-1"}}),
        ))
        .unwrap();
        let e = load_value(pool(json!({"models": ["gpt-4o", "llama"]}))).unwrap_err();
        assert!(e.to_string().starts_with("pools[0].models[1]:"), "{e}");
        let e = load_value(pool(json!({"accounts": [{"name": "k"}]}))).unwrap_err();
        assert!(
            e.to_string().starts_with("pools[0].accounts[0].api_key:"),
            "{e}"
        );
        let e = load_value(pool(json!({"response_mode": "later"}))).unwrap_err();
        assert!(e.to_string().starts_with("pools[0].response_mode:"), "{e}");
        let e = load_value(
            json!({"pools": [{"name": "d", "kind": "demo", "models": ["demo"],
            "endpoints": {"demo": "predefined-x"}}]}),
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("pools[0].endpoints:"), "{e}");
    }

    #[test]
    fn langgraph_pools_may_go_without_keys_and_check_their_assistants() {
        let pool = |extra: Value| {
            let mut p = json!({"name": "lg", "kind": "langgraph",
                "base_url": "http://127.0.0.1:2024", "models": ["agent-model"]});
            if let (Some(p), Some(e)) = (p.as_object_mut(), extra.as_object()) {
                p.extend(e.clone());
            }
            json!({"pools": [p]})
        };
        let cfg = load_value(pool(json!({}))).unwrap();
        assert_eq!(cfg.pools[0].kind.as_str(), "langgraph");
        load_value(pool(json!({"accounts": [{"name": "local"}]}))).unwrap();
        load_value(pool(json!({"accounts": [{"name": "k", "api_key": "lsv2"}],
            "assistant_id": "researcher", "assistants": {"agent-model": "writer"}})))
        .unwrap();
        let e = load_value(pool(json!({"assistants": {"other": "writer"}}))).unwrap_err();
        assert!(
            e.to_string().starts_with("pools[0].assistants.other:"),
            "{e}"
        );
        let e = load_value(pool(json!({"base_url": null}))).unwrap_err();
        assert!(e.to_string().starts_with("pools[0].base_url:"), "{e}");
        let e = load_value(pool(json!({"sessions": 2, "accounts": [{"name": "a"}]}))).unwrap_err();
        assert!(e.to_string().starts_with("pools[0].sessions:"), "{e}");
        let e = load_value(pool(json!({"endpoints": {"agent-model": "x"}}))).unwrap_err();
        assert!(e.to_string().starts_with("pools[0].endpoints:"), "{e}");
        let e = load_value(
            json!({"pools": [{"name": "d", "kind": "demo", "models": ["demo"],
            "assistant_id": "agent"}]}),
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("pools[0].assistant_id:"), "{e}");
    }

    #[test]
    fn lingma_pools_need_an_agent_and_name_their_keys() {
        let pool = |extra: Value| {
            let mut p = json!({"name": "lm", "kind": "lingma", "models": ["lingma"],
                "agent_binary": "/opt/lingma/bin/Lingma"});
            if let (Some(p), Some(e)) = (p.as_object_mut(), extra.as_object()) {
                p.extend(e.clone());
            }
            json!({"pools": [p]})
        };
        let cfg = load_value(pool(json!({"sessions": 3, "session_type": "developer",
            "agent_args": ["--workDir", "{work_dir}"], "info_file": "run/.info",
            "session_bundle": "H4sIAAAAAAAAA2NgGAWjYBSMgtELAA=="})))
        .unwrap();
        assert_eq!(cfg.pools[0].kind.as_str(), "lingma");
        let bad = |extra: Value, key: &str| {
            let e = load_value(pool(extra)).unwrap_err();
            assert!(
                e.to_string().starts_with(&format!("pools[0].{key}:")),
                "{e}"
            );
        };
        bad(json!({"agent_binary": null}), "agent_binary");
        bad(json!({"session_type": "pair"}), "session_type");
        bad(json!({"info_file": "../.info"}), "info_file");
        bad(json!({"info_file": "/tmp/.info"}), "info_file");
        bad(json!({"sessions": 0}), "sessions");
        bad(json!({"accounts": [{"name": "a"}]}), "accounts");
        bad(json!({"session_bundle": "not base64!"}), "session_bundle");
        bad(
            json!({"session_bundle_file": "/surely/missing/bundle"}),
            "session_bundle_file",
        );
        bad(json!({"startup_timeout": "0s"}), "startup_timeout");
        let e = load_value(
            json!({"pools": [{"name": "d", "kind": "demo", "models": ["demo"],
            "agent_binary": "x"}]}),
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("pools[0].agent_binary:"), "{e}");
    }
}
