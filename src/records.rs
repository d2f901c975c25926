//! The records berth keeps in its state database (see `berth_store`), one type per kind of fact.

use berth_store::{Record, Table};
use serde::{Deserialize, Serialize};

/// Node-wide settings kubelet hands over at run time and expects the runtime to keep.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeSettings {
    /// The pod CIDR from UpdateRuntimeConfig, handed to CNI configurations that ask for it. Empty until
    /// kubelet sends one.
    pub pod_cidr: String,
}

impl Record for NodeSettings {
    const TABLE: Table = Table::Node;
    fn key(&self) -> String {
        "settings".to_owned()
    }
}
