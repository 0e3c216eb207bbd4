//! Secrets by name, from one place: a file of that name in `CRM_SYNC_SECRETS_DIR` when there
//! is one (a Kubernetes Secret volume, which the kubelet updates in place, so a rotated
//! secret can be read again), else the environment variable of that name. Nothing here
//! ever puts a secret's value in an error.

use std::path::PathBuf;

/// A directory of secrets, one file per secret (a Kubernetes Secret volume).
pub const SECRETS_DIR_ENV: &str = "CRM_SYNC_SECRETS_DIR";

/// A secret's value and the file it came from (None: the environment).
#[derive(Clone)]
pub struct Secret {
    pub text: String,
    pub file: Option<PathBuf>,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secret").field("text", &"(not shown)").field("file", &self.file).finish()
    }
}

/// Where the secret `name` would be read from as a file, when `CRM_SYNC_SECRETS_DIR` holds it.
pub fn file_of(name: &str) -> Option<PathBuf> {
    std::env::var_os(SECRETS_DIR_ENV).filter(|d| !d.is_empty()).map(|d| PathBuf::from(d).join(name)).filter(|p| p.is_file())
}

/// The secret `name`: its file in `CRM_SYNC_SECRETS_DIR`, else its variable; None when
/// neither is there; an error (naming the file, never the value) when the file cannot be read.
pub fn read(name: &str) -> Result<Option<Secret>, String> {
    if let Some(path) = file_of(name) {
        let text = std::fs::read_to_string(&path).map_err(|e| format!("the secret {name} ({}): {e}", path.display()))?;
        return Ok(Some(Secret { text, file: Some(path) }));
    }
    Ok(std::env::var(name).ok().map(|text| Secret { text, file: None }))
}
