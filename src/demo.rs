//! `runwire demo`.

use crate::config::Settings;

pub async fn run(_settings: Settings) -> anyhow::Result<()> {
    anyhow::bail!("demo is not available yet")
}
