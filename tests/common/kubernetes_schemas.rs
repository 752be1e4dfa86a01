//! Manifests checked offline against the Kubernetes API schemas with kubernetes-validate (from
//! PyPI, pinned and installed by tests/run.sh), strictly: unknown fields fail too.

use std::path::Path;
use std::process::Command;

/// The Kubernetes version manifests are validated against.
pub const KUBERNETES_VERSION: &str = "1.33.0";

/// Fails the test, naming `what`, unless every document in the YAML file at `path` validates
/// with neither an error nor a warning.
pub fn assert_valid(what: &str, path: &Path) {
    let output = Command::new("python3")
        .args([
            "-m",
            "kubernetes_validate",
            "--strict",
            "-k",
            KUBERNETES_VERSION,
        ])
        .arg(path)
        .output()
        .expect("kubernetes-validate is not installed: run the tests with `bash tests/run.sh`");
    let report = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{what}: {report}");
    assert!(
        !report.contains("ERROR") && !report.contains("WARN"),
        "{what}: {report}"
    );
}
