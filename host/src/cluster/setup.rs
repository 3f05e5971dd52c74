//! Creating a cluster: every cell's streams, the lease bucket, then the
//! recorded configuration.

use std::time::Duration;

use async_nats::jetstream;

use super::cell_store::create_cell;
use super::connection::{
    CONFIG_BUCKET, CONFIG_KEY, Cluster, ClusterConfig, ClusterError, MAX_CELLS, create_kv,
};
use super::lease::create_bucket;
use super::mail::create_inbox;

impl Cluster {
    /// Creates the cluster: records `config` and creates every cell's
    /// log, object and inbox streams and the lease bucket.
    ///
    /// # Errors
    ///
    /// [`ClusterError::AlreadyInitialized`] when a configuration is
    /// recorded; [`ClusterError::Invalid`] for a bad configuration;
    /// [`ClusterError::JetStream`] when JetStream refuses.
    pub fn init(&self, config: &ClusterConfig) -> Result<(), ClusterError> {
        if config.cells == 0 || config.cells > MAX_CELLS {
            return Err(ClusterError::Invalid(format!(
                "--cells must be 1..={MAX_CELLS}, not {}",
                config.cells
            )));
        }
        if !matches!(config.replicas, 1 | 3 | 5) {
            return Err(ClusterError::Invalid(format!(
                "--replicas must be 1, 3 or 5, not {}",
                config.replicas
            )));
        }
        if !(1_000..=600_000).contains(&config.lease_ttl_ms) {
            return Err(ClusterError::Invalid(format!(
                "--lease-ttl must be 1s..=10m, not {} ms",
                config.lease_ttl_ms
            )));
        }
        if config.cell_ids.len() != config.cells as usize {
            return Err(ClusterError::Invalid("one id per cell".into()));
        }
        let replicas = config.replicas as usize;
        let value = serde_json::to_vec(config).map_err(|e| ClusterError::js("encoding", e))?;
        self.block(async {
            let js = self.js();
            let bucket = create_kv(js, CONFIG_BUCKET, replicas, Duration::ZERO)
                .await
                .map_err(|e| ClusterError::js("creating the configuration bucket", e))?;
            if let Some(existing) = bucket
                .get(CONFIG_KEY)
                .await
                .map_err(|e| ClusterError::js("reading the configuration", e))?
            {
                let cells =
                    serde_json::from_slice::<ClusterConfig>(&existing).map_or(0, |c| c.cells);
                return Err(ClusterError::AlreadyInitialized {
                    urls: self.urls().to_owned(),
                    cells,
                });
            }
            create_bucket(js, replicas, config.lease_ttl()).await?;
            for cell in 0..config.cells {
                create_cell(js, cell, replicas).await?;
                create_inbox(js, cell, replicas).await?;
            }
            // Last: a cluster is initialized only once everything exists.
            bucket
                .create(CONFIG_KEY, value.into())
                .await
                .map_err(|e| match e.kind() {
                    jetstream::kv::CreateErrorKind::AlreadyExists => {
                        ClusterError::AlreadyInitialized {
                            urls: self.urls().to_owned(),
                            cells: config.cells,
                        }
                    }
                    _ => ClusterError::js("recording the configuration", e),
                })?;
            Ok(())
        })
    }
}
