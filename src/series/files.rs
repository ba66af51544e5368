//! The server's storage layout for series documents, and atomic publication: a temporary
//! file beside the document, synced, then renamed over it (new folders synced too); stale
//! temporary files of our own naming swept.

use std::io::Write;
use std::path::{Path, PathBuf};

use rand::Rng;

use crate::ids::{TenantId, Uid};

/// `{json_root}/{tenant}/metadata/{study_date_origin}/{study}/{series}.json`, the server's path.
pub fn document_path(
    json_root: &Path,
    tenant: &TenantId,
    study_date_origin: &str,
    study: &Uid,
    series: &Uid,
) -> PathBuf {
    json_root
        .join(tenant.as_str())
        .join("metadata")
        .join(study_date_origin)
        .join(study.as_str())
        .join(format!("{series}.json"))
}

/// The `.dcm` files of a series folder.
pub fn list_dcm_files(folder: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(folder)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "dcm") {
            files.push(path);
        }
    }
    Ok(files)
}

/// Writes `bytes` to a new temporary file beside `path` (creating the folders) and syncs it.
/// Its name is `.{document name}.{16 hex digits}.tmp`, which [`is_own_temporary`] recognises.
pub fn write_temporary(path: &Path, bytes: &[u8]) -> std::io::Result<PathBuf> {
    let folder = path.parent().unwrap_or(Path::new("."));
    create_folders(folder)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temporary = folder.join(format!(".{name}.{:016x}.tmp", rand::rng().random::<u64>()));
    let mut file = std::fs::File::create_new(&temporary)?;
    let written = file.write_all(bytes).and_then(|()| file.sync_all());
    if let Err(error) = written {
        // A full disk, say: the part written is of no use to anyone.
        let _ = std::fs::remove_file(&temporary);
        return Err(error);
    }
    Ok(temporary)
}

/// Creates `folder` and its missing parents, syncing the parent of each folder created, so
/// that the new folders (and the document renamed into the last one) survive a crash.
fn create_folders(folder: &Path) -> std::io::Result<()> {
    let mut missing = Vec::new();
    for ancestor in folder.ancestors() {
        match std::fs::metadata(ancestor) {
            Ok(_) => break,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => missing.push(ancestor),
            Err(error) => return Err(error),
        }
    }
    for created in missing.into_iter().rev() {
        match std::fs::create_dir(created) {
            Ok(()) => {}
            // Another build of the same study got there first; its entry is synced too.
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(error) => return Err(error),
        }
        if let Some(parent) = created.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::File::open(parent)?.sync_all()?;
        }
    }
    Ok(())
}

/// Whether `name` is one of our temporary documents: `.{series}.json.{16 hex digits}.tmp`
/// for a valid Series Instance UID, as [`write_temporary`] names them.
pub fn is_own_temporary(name: &str) -> bool {
    let Some(inner) = name.strip_prefix('.').and_then(|n| n.strip_suffix(".tmp")) else {
        return false;
    };
    let Some((document, random)) = inner.rsplit_once('.') else {
        return false;
    };
    random.len() == 16
        && random
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        && document
            .strip_suffix(".json")
            .is_some_and(|series| Uid::parse(series).is_ok())
}

/// Removes our temporary documents older than `age` (left by a crash, or by a build
/// abandoned in the middle of a write) from the study folders under `json_root`
/// (`{tenant}/metadata/{date}/{study}/`), and nothing else; stops early once `keep_going`
/// says so. Returns how many were removed; unreadable folders are skipped.
pub fn sweep_temporaries(
    json_root: &Path,
    age: std::time::Duration,
    keep_going: impl Fn() -> bool,
) -> usize {
    let now = std::time::SystemTime::now();
    let stale = |path: &Path| {
        std::fs::symlink_metadata(path).is_ok_and(|meta| {
            meta.is_file()
                && meta
                    .modified()
                    .ok()
                    .and_then(|modified| now.duration_since(modified).ok())
                    .is_some_and(|elapsed| elapsed > age)
        })
    };
    let folders = |path: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(path)
            .into_iter()
            .flatten()
            .filter_map(|entry| entry.ok())
            .filter(|entry| entry.file_type().is_ok_and(|t| t.is_dir()))
            .map(|entry| entry.path())
            .collect()
    };
    let mut removed = 0;
    for tenant in folders(json_root) {
        for date in folders(&tenant.join("metadata")) {
            for study in folders(&date) {
                if !keep_going() {
                    return removed;
                }
                let Ok(entries) = std::fs::read_dir(&study) else {
                    continue;
                };
                for entry in entries.filter_map(|entry| entry.ok()) {
                    let path = entry.path();
                    let ours = entry.file_name().to_str().is_some_and(is_own_temporary);
                    if ours && stale(&path) && std::fs::remove_file(&path).is_ok() {
                        removed += 1;
                    }
                }
            }
        }
    }
    removed
}

/// Renames the temporary file over `path` and syncs the folder, so the rename survives a
/// crash; a reader sees the old document or the new one, never a part.
pub fn commit(temporary: &Path, path: &Path) -> std::io::Result<()> {
    std::fs::rename(temporary, path)?;
    if let Some(folder) = path.parent() {
        std::fs::File::open(folder)?.sync_all()?;
    }
    Ok(())
}

/// Removes a deleted study's series documents (every date folder of the tenant) and adds
/// the series they were for to `removed` as it goes, so that their Redis copies can go too
/// even when a later document cannot be removed.
pub fn remove_study_documents(
    json_root: &Path,
    tenant: &TenantId,
    study: &Uid,
    removed: &mut Vec<Uid>,
) -> std::io::Result<()> {
    let dates = match std::fs::read_dir(json_root.join(tenant.as_str()).join("metadata")) {
        Ok(dates) => dates,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(error),
    };
    for date in dates {
        let folder = date?.path().join(study.as_str());
        let documents = match std::fs::read_dir(&folder) {
            Ok(documents) => documents,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
            Err(error) => return Err(error),
        };
        for document in documents {
            let path = document?.path();
            let series = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".json"))
                .and_then(|n| Uid::parse(n).ok());
            if let Some(series) = series {
                std::fs::remove_file(&path)?;
                removed.push(series);
            }
        }
        // Only an empty folder goes; anything else left there is not ours to delete.
        let _ = std::fs::remove_dir(&folder);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;

    #[test]
    fn only_our_temporary_names_are_recognised() {
        assert!(is_own_temporary(".1.2.3.json.0123456789abcdef.tmp"));
        for name in [
            "1.2.3.json",
            ".1.2.3.json.0123456789abcdef",
            ".1.2.3.json.0123456789ABCDEF.tmp",
            ".1.2.3.json.0123456789abcde.tmp",
            ".1.2.3.json.0123456789abcdef0.tmp",
            ".1.2.3.txt.0123456789abcdef.tmp",
            ".notes.json.0123456789abcdef.tmp",
            "..json.0123456789abcdef.tmp",
            ".tmp",
        ] {
            assert!(!is_own_temporary(name), "{name}");
        }
    }

    #[test]
    fn nested_folders_are_created_and_existing_ones_accepted() {
        let root = tempfile::tempdir().expect("temp dir");
        let folder = root.path().join("t/metadata/20250807/1.2");
        create_folders(&folder).expect("created");
        assert!(folder.is_dir());
        create_folders(&folder).expect("already there");
        let document = folder.join("1.2.3.json");
        let temporary = write_temporary(&document, b"[]").expect("written");
        assert!(is_own_temporary(
            &temporary.file_name().expect("name").to_string_lossy()
        ));
        commit(&temporary, &document).expect("renamed");
        assert_eq!(std::fs::read(&document).expect("read"), b"[]");
    }

    #[test]
    fn the_sweep_removes_only_our_old_temporaries_in_study_folders() {
        let root = tempfile::tempdir().expect("temp dir");
        let study = root.path().join("t/metadata/20250807/1.2");
        std::fs::create_dir_all(&study).expect("folders");
        let two_hours_ago = SystemTime::now() - Duration::from_secs(7_200);
        let make = |path: &Path, old: bool| {
            let file = std::fs::File::create(path).expect("create");
            if old {
                file.set_modified(two_hours_ago).expect("age it");
            }
        };
        let old_ours = study.join(".1.2.3.json.0123456789abcdef.tmp");
        let fresh_ours = study.join(".1.2.4.json.0123456789abcdef.tmp");
        let old_other = study.join(".notes.0123456789abcdef.tmp");
        let old_document = study.join("1.2.5.json");
        let elsewhere = root.path().join("t/.1.2.3.json.0123456789abcdef.tmp");
        make(&old_ours, true);
        make(&fresh_ours, false);
        make(&old_other, true);
        make(&old_document, true);
        make(&elsewhere, true);
        assert_eq!(
            sweep_temporaries(root.path(), Duration::from_secs(3_600), || false),
            0,
            "stopped before the first folder"
        );
        assert_eq!(
            sweep_temporaries(root.path(), Duration::from_secs(3_600), || true),
            1
        );
        assert!(!old_ours.exists());
        for kept in [&fresh_ours, &old_other, &old_document, &elsewhere] {
            assert!(kept.exists(), "{}", kept.display());
        }
    }
}
