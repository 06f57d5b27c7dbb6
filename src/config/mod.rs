//! Configuration: the TOML schema (its key names are a public contract),
//! loading with `TROUPE__SECTION__KEY` environment overrides, secrets
//! written as `"${ENV}"` or `*_file`, and validation that names the dotted
//! key at fault.

mod load;
mod schema;

pub use load::{from_value, invalid, load, read_secret, ConfigError, KindCheck};
pub use schema::{
    AccountConfig, ApiKey, ByteSize, ClusterConfig, Config, LogFormat, ModelMapping, PoolConfig,
    ResponsesConfig, Secret, ServerConfig, SupervisorConfig, SupervisorOverrides,
};
