//! [`Policy`]: what a provider definition may ask of Studio's environment, checked when
//! the config is loaded and again when a runtime registers the provider.
//!
//! - The content expander's `config.api_key_env` sends a variable's value to its
//!   `base_url`: it may name only a variable on `provider_runtime.api_key_env_allow`.
//! - No provider receives a credential (see [`sandbox::CREDENTIAL_PREFIXES`]): neither
//!   through `api_key_env` nor through an external provider's `sandbox.env_allow`.
//! - An external provider has a program (`command`), not also a built-in `worker`, and
//!   limits of at least 1.

use studio_model::Provider;

use crate::sandbox::{self, is_credential_variable};

/// The built-in worker that reads `config.api_key_env`.
const EXPANDER: &str = "content-expander";

/// The rules a provider definition must follow.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// The variables a content expander's `api_key_env` may name (none by default).
    api_key_env_allow: Vec<String>,
}

/// A provider definition the policy refuses. The messages say what to change.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// `api_key_env` names a variable not on the allow-list.
    #[error(
        "invalid configuration: provider {provider:?}: config.api_key_env = {name:?} is not on provider_runtime.api_key_env_allow ({allowed}); its value would be sent to config.base_url. Add {name:?} to provider_runtime.api_key_env_allow if that is what you mean, or name the variable that holds this API's key"
    )]
    ApiKeyEnv {
        /// The provider.
        provider: String,
        /// The variable.
        name: String,
        /// The allow-list, for the message.
        allowed: String,
    },
    /// A setting names a credential variable.
    #[error(
        "invalid configuration: {setting} names {name:?}: a Studio, cloud, database or bus variable (prefixes {prefixes}) is never given to a provider; remove it, and give the provider its own variable"
    )]
    Credential {
        /// The setting, with its provider.
        setting: String,
        /// The variable.
        name: String,
        /// The refused prefixes, for the message.
        prefixes: String,
    },
    /// An external provider's definition does not fit.
    #[error("invalid configuration: provider {provider:?}: {problem}")]
    External {
        /// The provider.
        provider: String,
        /// What to change.
        problem: String,
    },
}

impl Policy {
    /// A policy allowing `api_key_env_allow` as content-expander keys; refuses a
    /// credential variable on the list.
    pub fn new(api_key_env_allow: Vec<String>) -> Result<Self, Refused> {
        if let Some(name) = api_key_env_allow.iter().find(|n| is_credential_variable(n)) {
            return Err(credential("provider_runtime.api_key_env_allow", name));
        }
        Ok(Policy { api_key_env_allow })
    }

    /// Checks one provider definition.
    pub fn check(&self, provider: &Provider) -> Result<(), Refused> {
        if provider.is_external() {
            return check_external(provider);
        }
        if provider.worker_name() != EXPANDER {
            return Ok(());
        }
        let config = provider.config.value();
        let Some(name) = config.get("api_key_env").and_then(|v| v.as_str()) else {
            return Ok(());
        };
        if is_credential_variable(name) {
            return Err(credential(
                &format!("provider {:?}: config.api_key_env", provider.id),
                name,
            ));
        }
        if !self.api_key_env_allow.iter().any(|allowed| allowed == name) {
            return Err(Refused::ApiKeyEnv {
                provider: provider.id.clone(),
                name: name.to_owned(),
                allowed: if self.api_key_env_allow.is_empty() {
                    "empty".into()
                } else {
                    self.api_key_env_allow.join(", ")
                },
            });
        }
        Ok(())
    }
}

fn check_external(provider: &Provider) -> Result<(), Refused> {
    let problem = |problem: String| Refused::External {
        provider: provider.id.clone(),
        problem,
    };
    if provider.worker.is_some() {
        return Err(problem(
            "both `command` and `worker` are set: keep `command` for an external program, or `worker` for a built-in one".into(),
        ));
    }
    if provider.command[0].is_empty() {
        return Err(problem(
            "`command` starts with an empty program name".into(),
        ));
    }
    let sandbox = &provider.sandbox;
    for (name, value) in [
        ("timeout_ms", provider.timeout_ms),
        ("sandbox.cpu_secs", sandbox.cpu_secs),
        ("sandbox.address_space_mib", sandbox.address_space_mib),
        ("sandbox.max_output_bytes", sandbox.max_output_bytes),
    ] {
        if value == 0 {
            return Err(problem(format!("{name} must be at least 1")));
        }
    }
    if let Some(name) = sandbox.env_allow.iter().find(|n| is_credential_variable(n)) {
        return Err(credential(
            &format!("provider {:?}: sandbox.env_allow", provider.id),
            name,
        ));
    }
    Ok(())
}

fn credential(setting: &str, name: &str) -> Refused {
    Refused::Credential {
        setting: setting.to_owned(),
        name: name.to_owned(),
        prefixes: sandbox::CREDENTIAL_PREFIXES.join(", "),
    }
}
