//! The `openai` kind's own keys, with errors naming the dotted key.

use serde::Deserialize;

use crate::canonical::{Speaks, Wire};
use crate::config::{ConfigError, PoolConfig};

/// Which of OpenAI's APIs the upstream is called with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Api {
    /// `POST {base_url}/chat/completions` (the default).
    #[default]
    Chat,
    /// `POST {base_url}/responses`: for models served only there.
    Responses,
}

/// The keys an `openai` pool has besides the common ones.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Settings {
    #[serde(default)]
    pub api: Api,
}

pub(crate) fn validate(
    pool: &mut PoolConfig,
    at: &dyn Fn(&str) -> String,
) -> Result<(), ConfigError> {
    pool.settings::<Settings>(at)?;
    crate::upstream::http::config::validate_keyed(pool, at)
}

/// What the pool's upstream takes: Chat Completions, or Responses.
pub(crate) fn speaks(pool: &PoolConfig) -> Speaks {
    match pool.settings::<Settings>(&|k| k.to_owned()) {
        Ok(Settings {
            api: Api::Responses,
        }) => Speaks::Wire(Wire::OpenAiResponses),
        _ => Speaks::Wire(Wire::OpenAiChat),
    }
}
