//! Hot reload: SIGHUP, `POST /admin/reload`, or a change to the config file
//! applies added, removed and changed pools and accounts without a restart.
//! New sessions start; removed ones drain their in-flight requests and
//! leave; unchanged ones keep running and keep their conversations. An
//! invalid new configuration is rejected with the reason and the old one
//! stays.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use actix::prelude::*;
use arc_swap::ArcSwap;

use crate::actors::credentials::CredentialStore;
use crate::actors::messages::SetModels;
use crate::actors::pool::{PoolSupervisor, RetirePool, UpdateAccounts};
use crate::actors::restart_log::{EventKind, RestartEvent, RestartLog};
use crate::actors::router::Router;
use crate::actors::Reload;
use crate::config::{Config, PoolConfig};
use crate::http::Catalog;

/// How often the config file's modification time is looked at.
const WATCH_EVERY: Duration = Duration::from_secs(2);

/// Owns the running configuration and the pool supervisors built from it.
pub struct Reloader {
    path: PathBuf,
    config: Config,
    pools: HashMap<String, Addr<PoolSupervisor>>,
    router: Addr<Router>,
    log: Addr<RestartLog>,
    arbiters: Arc<Vec<ArbiterHandle>>,
    catalog: Arc<ArcSwap<Catalog>>,
    modified: Option<SystemTime>,
    /// Replicas sessions share login state with, if any.
    cluster: Option<Arc<crate::cluster::Cluster>>,
}

impl Reloader {
    pub fn new(
        path: PathBuf,
        config: Config,
        router: Addr<Router>,
        log: Addr<RestartLog>,
        catalog: Arc<ArcSwap<Catalog>>,
    ) -> Self {
        let modified = modified(&path);
        Reloader {
            path,
            config,
            pools: HashMap::new(),
            router,
            log,
            arbiters: Arc::new(Vec::new()),
            catalog,
            modified,
            cluster: None,
        }
    }

    /// Sessions log in once across the cluster and share the result.
    pub(crate) fn with_cluster(mut self, cluster: Option<Arc<crate::cluster::Cluster>>) -> Self {
        self.cluster = cluster;
        self
    }

    /// The threads sessions are spread over (the HTTP workers').
    pub fn place(&mut self, arbiters: Vec<ArbiterHandle>) {
        self.arbiters = Arc::new(arbiters);
    }

    fn start_pool(&mut self, pool: &PoolConfig) {
        let addr = PoolSupervisor::new(
            pool.clone(),
            &self.config.supervisor,
            self.router.clone(),
            self.log.clone(),
            self.arbiters.clone(),
        )
        .with_credentials(
            CredentialStore::new(&self.config.server.data_dir).with_cluster(self.cluster.clone()),
        )
        .start();
        self.pools.insert(pool.name.clone(), addr);
    }

    fn retire_pool(&mut self, name: &str) {
        if let Some(addr) = self.pools.remove(name) {
            addr.do_send(RetirePool);
        }
    }

    /// Moves from the running configuration to `new`; returns what changed.
    fn apply(&mut self, new: Config) -> String {
        let old = std::mem::replace(&mut self.config, new);
        let mut changes = Vec::new();
        let mut restart_needed = Vec::new();
        let s = (&old.server, &self.config.server);
        if s.0.listen != s.1.listen {
            restart_needed.push("server.listen");
        }
        if s.0.workers != s.1.workers {
            restart_needed.push("server.workers");
        }
        if s.0.data_dir != s.1.data_dir {
            restart_needed.push("server.data_dir");
        }
        // A new supervisor policy applies to sessions as they are started.
        let policy_changed = old.supervisor != self.config.supervisor;
        for pool in &old.pools {
            if !self.config.pools.iter().any(|p| p.name == pool.name) {
                self.retire_pool(&pool.name);
                changes.push(format!("removed pool {}", pool.name));
            }
        }
        let new_pools = self.config.pools.clone();
        for pool in &new_pools {
            match old.pools.iter().find(|p| p.name == pool.name) {
                None => {
                    self.start_pool(pool);
                    changes.push(format!("added pool {}", pool.name));
                }
                Some(before) if before == pool && !policy_changed => {}
                Some(before) if only_accounts_differ(before, pool) && !policy_changed => {
                    if let Some(addr) = self.pools.get(&pool.name) {
                        addr.do_send(UpdateAccounts { cfg: pool.clone() });
                    }
                    changes.push(format!("changed accounts of pool {}", pool.name));
                }
                Some(_) => {
                    self.retire_pool(&pool.name);
                    self.start_pool(pool);
                    changes.push(format!("replaced pool {}", pool.name));
                }
            }
        }
        self.router.do_send(SetModels {
            models: self
                .config
                .pools
                .iter()
                .flat_map(|p| p.models.iter().map(|m| Arc::from(m.public.as_str())))
                .collect(),
        });
        self.catalog.store(Arc::new(Catalog::new(
            &self.config,
            crate::upstream::registry::speaks,
        )));
        let mut summary = if changes.is_empty() {
            "no pool changed".to_owned()
        } else {
            changes.join(", ")
        };
        if !restart_needed.is_empty() {
            summary.push_str(&format!(
                "; {} changed but only take effect after a restart",
                restart_needed.join(", ")
            ));
        }
        summary
    }

    fn record(&self, event: EventKind, reason: &str) {
        self.log.do_send(RestartEvent::now("*", "*", event, reason));
    }
}

fn only_accounts_differ(a: &PoolConfig, b: &PoolConfig) -> bool {
    let strip = |p: &PoolConfig| PoolConfig {
        accounts: Vec::new(),
        ..p.clone()
    };
    // Account-less kinds number their sessions from `sessions`, which is a
    // pool-level setting: those pools are replaced whole.
    !a.accounts.is_empty() && !b.accounts.is_empty() && strip(a) == strip(b)
}

fn modified(path: &std::path::Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl Actor for Reloader {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        for pool in self.config.pools.clone() {
            self.start_pool(&pool);
        }
        ctx.run_interval(WATCH_EVERY, |act, ctx| {
            let now = modified(&act.path);
            if now.is_some() && now != act.modified {
                act.modified = now;
                ctx.notify(Reload { source: "file" });
            }
        });
    }
}

impl Handler<Reload> for Reloader {
    type Result = Result<String, String>;

    fn handle(&mut self, msg: Reload, _: &mut Self::Context) -> Self::Result {
        self.modified = modified(&self.path);
        match super::load_config(&self.path) {
            Ok(new) => {
                let summary = self.apply(new);
                tracing::info!(source = msg.source, %summary, "configuration reloaded");
                self.record(EventKind::Reload, &format!("{} ({})", summary, msg.source));
                Ok(summary)
            }
            Err(e) => {
                let reason = e.to_string();
                tracing::error!(source = msg.source, %reason, "configuration rejected; the running one stays");
                self.record(
                    EventKind::ReloadRejected,
                    &format!("{reason} ({})", msg.source),
                );
                Err(reason)
            }
        }
    }
}
