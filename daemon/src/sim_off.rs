//! Built without the `sim` feature: no simulated providers. The daemon then needs an API key
//! (or a configured local server) to run, and fault injection answers that there is nothing to
//! inject into.

use std::collections::HashMap;

use mythos_protocol::SimFault;

use crate::config::ProviderConfig;

/// A simulated provider; none can exist in this build.
#[derive(Clone)]
pub enum SimProvider {}

impl SimProvider {
    /// Never called: there is no value of this type.
    pub fn inject(&self, _faults: impl IntoIterator<Item = SimFault>) {
        match *self {}
    }

    /// Never called: there is no value of this type.
    pub fn shutdown(&self) {
        match *self {}
    }
}

/// The simulated providers (always empty here).
pub type Sims = (Vec<ProviderConfig>, HashMap<String, SimProvider>);

/// Fails: this build has no simulated providers.
pub async fn start_builtin() -> std::io::Result<Sims> {
    Err(std::io::Error::other(
        "this mythosd was built without the simulated providers (feature `sim`): set an API \
         key such as ANTHROPIC_API_KEY",
    ))
}
