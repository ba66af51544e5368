//! `check-config`: the effective settings with secrets redacted, and every check's result.

use crate::helpers::{TestEnv, daemon_command, output_of};

async fn check_config(env: &TestEnv, extra: &[(&str, String)]) -> (bool, String) {
    let output = output_of(
        daemon_command(env)
            .envs(extra.iter().map(|(k, v)| (*k, v.as_str())))
            .env("DCW__LOG__LEVEL", "error")
            .arg("check-config"),
    )
    .await;
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

#[tokio::test]
async fn check_config_tests_every_service_and_root_without_printing_secrets() {
    let env = TestEnv::new().await;
    let roots = tempfile::tempdir().expect("roots");
    // Trust authentication ignores the password, so the URL still connects.
    let with_password =
        env.settings
            .database
            .url
            .expose()
            .replacen("postgres@", "postgres:hunter2@", 1);
    let (ok, printed) = check_config(
        &env,
        &[
            ("DCW__DATABASE__URL", with_password),
            (
                "DCW__SERIES__DICOM_ROOT",
                roots.path().display().to_string(),
            ),
            ("DCW__SERIES__JSON_ROOT", roots.path().display().to_string()),
        ],
    )
    .await;
    assert!(ok, "{printed}");
    for line in [
        "redis: ok",
        "postgres: ok",
        "series.dicom_root: ok",
        "series.json_root: ok",
        "[redacted]",
    ] {
        assert!(printed.contains(line), "{line} in {printed}");
    }
    assert!(!printed.contains("hunter2"), "the password never prints");

    let (ok, printed) = check_config(
        &env,
        &[
            (
                "DCW__SERIES__DICOM_ROOT",
                roots.path().display().to_string(),
            ),
            (
                "DCW__SERIES__JSON_ROOT",
                roots.path().join("missing").display().to_string(),
            ),
        ],
    )
    .await;
    assert!(!ok);
    assert!(printed.contains("series.json_root: FAILED"), "{printed}");
}
