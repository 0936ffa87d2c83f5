//! Helpers of the unit tests.

use std::sync::Arc;

use crate::store::{self, Store};

/// A fresh, migrated SQLite store in `dir`.
pub async fn sqlite_store(dir: &std::path::Path) -> Arc<dyn Store> {
    let store = store::open(&store::OpenOptions {
        url: String::new(),
        data_dir: dir.to_owned(),
        max_connections: 1,
        connect_timeout: std::time::Duration::from_secs(5),
        exclusive: false,
    })
    .await
    .expect("a SQLite store in a temporary directory");
    store.migrate().await.expect("migrations");
    store
}
