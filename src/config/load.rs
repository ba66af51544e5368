//! The loading layers: built-in defaults, `config/default.toml` when present, `--config
//! FILE`, then `DCW__SECTION__KEY` environment variables; passwords read from their files
//! last, and the result validated.

use std::path::Path;

use crate::config::{ConfigError, Secret, Settings};

/// The file read, when present, after the built-in defaults and before `--config`.
const DEFAULT_CONFIG_FILE: &str = "config/default.toml";

impl Settings {
    /// Loads the layers (defaults, `config/default.toml` when present, `file`, then the
    /// environment) and validates the result.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_from(Path::new(DEFAULT_CONFIG_FILE), file, std::env::vars())
    }

    /// As [`Settings::load`], with the default file and the environment given explicitly.
    pub fn load_from(
        default_file: &Path,
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut home = None;
        // An empty value means unset, as in most shells' and orchestrators' habits: a
        // `DCW__SERIES__JSON_ROOT=` left in a file must not turn series documents on.
        let env: config::Map<String, String> = env
            .into_iter()
            .filter(|(name, value)| {
                if name == "HOME" {
                    home = Some(value.clone());
                }
                name.starts_with("DCW__") && !value.is_empty()
            })
            .collect();
        let mut builder =
            config::Config::builder().add_source(config::File::from(default_file).required(false));
        if let Some(file) = file {
            builder = builder.add_source(config::File::from(file).required(true));
        }
        let layered = builder
            .add_source(
                config::Environment::with_prefix("DCW")
                    .prefix_separator("__")
                    .separator("__")
                    .source(Some(env)),
            )
            .build()
            .map_err(|e| ConfigError(vec![e.to_string()]))?;
        let mut settings: Settings = layered
            .try_deserialize()
            .map_err(|e| ConfigError(vec![e.to_string()]))?;
        settings.read_password_files()?;
        settings.expand_home(home.as_deref())?;
        settings.validate()?;
        Ok(settings)
    }

    /// Expands a leading `~` in the series roots as the server does for its storage paths,
    /// so that a root copied from the server's configuration is the same folder.
    fn expand_home(&mut self, home: Option<&str>) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        for (key, root) in [
            ("series.dicom_root", &mut self.series.dicom_root),
            ("series.json_root", &mut self.series.json_root),
        ] {
            let Some(path) = root.as_deref().and_then(Path::to_str) else {
                continue;
            };
            let rest = match path.strip_prefix('~') {
                Some(rest) if rest.is_empty() || rest.starts_with('/') => rest,
                Some(_) => {
                    problems.push(format!(
                        "{key}: {path}: only `~` and `~/…` are expanded, give the absolute path"
                    ));
                    continue;
                }
                None => continue,
            };
            match home.filter(|h| !h.is_empty()) {
                Some(home) => *root = Some(Path::new(home).join(rest.trim_start_matches('/'))),
                None => problems.push(format!("{key}: {path} starts with `~` but HOME is not set")),
            }
        }
        ConfigError::unless_empty(problems)
    }

    /// Replaces each password by the content of its `password_file`, when one is given.
    ///
    /// A file that is empty or holds only white space (the empty credential files of a site
    /// whose Redis or PostgreSQL has no password) counts as no file: no password is sent
    /// unless `password` or the URL gives one. An empty `password` is no password either.
    fn read_password_files(&mut self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        for (key, file, password) in [
            (
                "redis.password_file",
                &self.redis.password_file,
                &mut self.redis.password,
            ),
            (
                "database.password_file",
                &self.database.password_file,
                &mut self.database.password,
            ),
        ] {
            if password.as_ref().is_some_and(|p| p.expose().is_empty()) {
                *password = None;
            }
            let Some(file) = file else { continue };
            match std::fs::read_to_string(file) {
                // Sending AUTH with an empty password fails against a server without one.
                Ok(text) if text.trim().is_empty() => {}
                // One trailing newline is what `echo` and most secret tools add.
                Ok(text) => {
                    *password = Some(Secret::from(
                        text.strip_suffix('\n')
                            .map_or(text.as_str(), |t| t.strip_suffix('\r').unwrap_or(t)),
                    ))
                }
                Err(error) => {
                    problems.push(format!("{key}: cannot read {}: {error}", file.display()))
                }
            }
        }
        ConfigError::unless_empty(problems)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::config::StatementTimeoutVia;
    use std::io::Write;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn toml_file(text: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::Builder::new()
            .suffix(".toml")
            .tempfile()
            .expect("temp file");
        file.write_all(text.as_bytes()).expect("write temp file");
        file
    }

    /// Loads settings from a default file and a `--config` file with these contents, and
    /// from these environment variables.
    pub(in crate::config) fn load(
        default: &str,
        file: Option<&str>,
        vars: &[(&str, &str)],
    ) -> Result<Settings, ConfigError> {
        let default = toml_file(default);
        let file = file.map(toml_file);
        Settings::load_from(default.path(), file.as_ref().map(|f| f.path()), env(vars))
    }

    #[test]
    fn later_layers_win() {
        let s = load(
            "[stream]\nkey = \"from-default\"\ngroup = \"g-default\"\nbatch_size = 10\n",
            Some("[stream]\nkey = \"from-file\"\nbatch_size = 20\n"),
            &[("DCW__STREAM__BATCH_SIZE", "30")],
        )
        .expect("valid");
        assert_eq!(s.stream.group, "g-default");
        assert_eq!(s.stream.key, "from-file");
        assert_eq!(s.stream.batch_size, 30);
    }

    #[test]
    fn environment_overrides_nested_keys_with_underscores() {
        let s = load(
            "",
            None,
            &[
                ("DCW__STREAM__DEAD_LETTER_KEY", "dl"),
                ("DCW__CACHE__STUDY_TTL_SECS", "60"),
                ("DCW__REDIS__PASSWORD", "0123"),
                ("DCW__SERIES__REDIS_COPY", "true"),
            ],
        )
        .expect("valid");
        assert_eq!(s.stream.dead_letter_key, "dl");
        assert_eq!(s.cache.study_ttl_secs, 60);
        // Strings that look like numbers stay strings: no leading zero is lost.
        assert_eq!(s.redis.password.as_ref().map(Secret::expose), Some("0123"));
        assert!(s.series.redis_copy);
    }

    #[test]
    fn a_value_of_the_wrong_type_names_its_key() {
        let err = load("", None, &[("DCW__STREAM__CLAIM_IDLE_MS", "soon")]).expect_err("invalid");
        assert!(err.to_string().contains("stream.claim_idle_ms"), "{err}");
    }

    #[test]
    fn the_statement_timeout_goes_by_startup_parameter_or_transaction_and_nothing_else() {
        let s = load("", None, &[]).expect("defaults are valid");
        assert_eq!(
            s.database.statement_timeout_via,
            StatementTimeoutVia::Startup
        );
        let s = load(
            "[database]\nstatement_timeout_via = \"transaction\"\n",
            None,
            &[],
        )
        .expect("transaction is valid");
        assert_eq!(
            s.database.statement_timeout_via,
            StatementTimeoutVia::Transaction
        );
        assert!(
            s.to_redacted_toml()
                .contains("statement_timeout_via = \"transaction\""),
            "check-config shows it"
        );
        for value in ["none", "Transaction", "session"] {
            let err = load("", None, &[("DCW__DATABASE__STATEMENT_TIMEOUT_VIA", value)])
                .expect_err("invalid");
            assert_eq!(
                err.0,
                [format!(
                    "unknown value `{value}`, expected `startup` or `transaction` (behind \
                     PgBouncer) for key `database.statement_timeout_via`"
                )]
            );
        }
    }

    #[test]
    fn an_unknown_key_is_refused_by_name() {
        let err = load("", None, &[("DCW__STREAM__BATCHSIZE", "3")]).expect_err("invalid");
        assert!(err.to_string().contains("batchsize"), "{err}");
    }

    #[test]
    fn passwords_are_read_from_files_without_the_trailing_newline() {
        let redis = toml_file("from-file\n");
        let database = toml_file("db-secret\r\n");
        let s = load(
            "",
            None,
            &[
                ("DCW__REDIS__PASSWORD", "from-env"),
                (
                    "DCW__REDIS__PASSWORD_FILE",
                    &redis.path().display().to_string(),
                ),
                (
                    "DCW__DATABASE__PASSWORD_FILE",
                    &database.path().display().to_string(),
                ),
            ],
        )
        .expect("valid");
        assert_eq!(
            s.redis.password.as_ref().map(Secret::expose),
            Some("from-file")
        );
        assert_eq!(
            s.database.password.as_ref().map(Secret::expose),
            Some("db-secret")
        );
        let err = load(
            "",
            None,
            &[("DCW__DATABASE__PASSWORD_FILE", "/nonexistent/pw")],
        )
        .expect_err("missing file");
        assert!(
            err.0[0].starts_with("database.password_file: cannot read /nonexistent/pw"),
            "{err}"
        );
    }

    #[test]
    fn an_empty_variable_counts_as_unset() {
        let s = load(
            "[series]\nquiet_ms = 500\n",
            None,
            &[
                ("DCW__SERIES__JSON_ROOT", ""),
                ("DCW__SERIES__QUIET_MS", ""),
            ],
        )
        .expect("valid");
        assert_eq!(s.series.json_root, None, "series documents stay off");
        assert_eq!(s.series.quiet_ms, 500, "the file's value stands");
    }

    #[test]
    fn a_leading_tilde_in_the_roots_is_the_home_folder_as_for_the_server() {
        let roots = [
            ("DCW__SERIES__DICOM_ROOT", "~/dicom/files/"),
            ("DCW__SERIES__JSON_ROOT", "~"),
        ];
        let s = load("", None, &[&roots[..], &[("HOME", "/home/dicom")]].concat()).expect("valid");
        assert_eq!(
            s.series.dicom_root.as_deref(),
            Some(Path::new("/home/dicom/dicom/files"))
        );
        assert_eq!(
            s.series.json_root.as_deref(),
            Some(Path::new("/home/dicom"))
        );

        let err = load("", None, &roots).expect_err("no HOME");
        assert!(
            err.to_string()
                .contains("series.dicom_root: ~/dicom/files/ starts with `~` but HOME is not set"),
            "{err}"
        );
        let err = load(
            "",
            None,
            &[("DCW__SERIES__JSON_ROOT", "~dicom/json"), ("HOME", "/h")],
        )
        .expect_err("~user");
        assert!(
            err.to_string()
                .contains("series.json_root: ~dicom/json: only `~` and `~/…` are expanded"),
            "{err}"
        );
    }

    #[test]
    fn an_empty_or_blank_password_file_means_no_password() {
        // The empty credential files of a site whose Redis and PostgreSQL have no password.
        for content in ["", "\n", "\r\n", "  \t\n\n"] {
            let redis = toml_file(content);
            let database = toml_file(content);
            let s = load(
                "",
                None,
                &[
                    (
                        "DCW__REDIS__PASSWORD_FILE",
                        &redis.path().display().to_string(),
                    ),
                    (
                        "DCW__DATABASE__PASSWORD_FILE",
                        &database.path().display().to_string(),
                    ),
                ],
            )
            .expect("valid");
            assert!(s.redis.password.is_none(), "{content:?}");
            assert!(s.database.password.is_none(), "{content:?}");
        }
        // Counts as no file: a password given otherwise still applies; an empty one does not.
        let empty = toml_file("");
        let empty = empty.path().display().to_string();
        let s = load(
            "",
            None,
            &[
                ("DCW__REDIS__PASSWORD", "from-env"),
                ("DCW__REDIS__PASSWORD_FILE", &empty),
                ("DCW__DATABASE__PASSWORD", ""),
                ("DCW__DATABASE__PASSWORD_FILE", &empty),
            ],
        )
        .expect("valid");
        assert_eq!(
            s.redis.password.as_ref().map(Secret::expose),
            Some("from-env")
        );
        assert!(s.database.password.is_none());
        // A password that merely contains spaces is kept as it is.
        let spaced = toml_file(" pass word \n");
        let s = load(
            "",
            None,
            &[(
                "DCW__REDIS__PASSWORD_FILE",
                &spaced.path().display().to_string(),
            )],
        )
        .expect("valid");
        assert_eq!(
            s.redis.password.as_ref().map(Secret::expose),
            Some(" pass word ")
        );
    }
}
