//! A private PostgreSQL for `runwire serve`/`demo` when no `DATABASE_URL` is set.

pub struct EmbeddedPostgres {
    url: String,
}

impl EmbeddedPostgres {
    pub async fn start() -> anyhow::Result<Self> {
        anyhow::bail!("set DATABASE_URL (embedded PostgreSQL is not available yet)")
    }

    pub fn url(&self) -> String {
        self.url.clone()
    }
}
