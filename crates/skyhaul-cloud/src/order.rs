//! Listings must come in ascending key order: the engine merge-joins them (source against
//! destination, a listing against the copy's records), so one out of order would make it
//! take present objects for missing ones. A server that breaks the order fails the listing.

use skyhaul_store::{Error, ErrorKind, Result};

/// Checks that the keys of one listing ascend strictly.
pub(crate) struct InOrder {
    target: String,
    last: Option<String>,
}

impl InOrder {
    pub(crate) fn new(target: String) -> InOrder {
        InOrder { target, last: None }
    }

    pub(crate) fn check(&mut self, key: &str) -> Result<()> {
        if self.last.as_deref().is_some_and(|l| l >= key) {
            return Err(Error::new(
                ErrorKind::Other,
                format!(
                    "{}: list: the server listed '{key}' out of order",
                    self.target
                ),
            ));
        }
        self.last = Some(key.to_string());
        Ok(())
    }
}
