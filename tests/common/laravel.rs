//! The host tables as a Laravel app makes them: `tests/fixtures/laravel/create_schema.php`
//! runs Laravel's own Schema builder (Debian's php-laravel-framework) against a test's
//! database, so a test can serve the column types a real host has (json, timestamp without
//! time zone, int4 tenant ids, varchar) instead of runwire's own SQL. It creates the host's
//! tables only; installing runwire's integration is the test's business.

use std::path::Path;
use tokio::process::Command;

/// What to install when PHP or Laravel is missing (the same packages `.ci/run` installs).
const INSTALL: &str = "apt-get install -y php-cli php-pgsql php-laravel-framework";

/// Creates the seven host tables in the (empty) database at `database_url` the way a Laravel
/// app's migrations would. Panics with the reason, and what to install when PHP or Laravel
/// is missing.
pub async fn create_laravel_schema(database_url: &str) {
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/laravel/create_schema.php");
    let output = match Command::new("php")
        .arg(&script)
        .arg(database_url)
        .output()
        .await
    {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("the Laravel-schema fixture needs PHP, which is not on PATH: {INSTALL}")
        }
        Err(e) => panic!("cannot run php {}: {e}", script.display()),
    };
    assert!(
        output.status.success(),
        "the Laravel-schema fixture failed ({}; if PHP or Laravel is missing: {INSTALL}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
}
