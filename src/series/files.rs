//! The server's storage layout for series documents, and atomic publication: a temporary
//! file beside the document, synced, then renamed over it.

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
pub fn write_temporary(path: &Path, bytes: &[u8]) -> std::io::Result<PathBuf> {
    let folder = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(folder)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temporary = folder.join(format!(".{name}.{:016x}.tmp", rand::rng().random::<u64>()));
    let mut file = std::fs::File::create_new(&temporary)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    Ok(temporary)
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
