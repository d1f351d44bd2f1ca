//! `tls.acme.state_dir`: what survives a restart. Two files, each written
//! whole to a new temporary file (mode 0600, created exclusively), synced,
//! then renamed over the old one, so a crash leaves the old file or the new
//! one, never half of either:
//!
//! - `account.json`: the ACME account (its private key inside) and the
//!   directory it belongs to; another directory gets a new account.
//! - `certificate.pem`: the chain, leaf first, then its private key, in one
//!   file so that chain and key can never be from different orders.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::sign::CertifiedKey;

use crate::tls::certs::{self, CertInfo};

/// The account file's name in the state directory.
pub const ACCOUNT: &str = "account.json";
/// The certificate file's name in the state directory.
pub const CERTIFICATE: &str = "certificate.pem";

/// The state directory of one `[tls.acme]`.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

/// `account.json`.
#[derive(serde::Serialize, serde::Deserialize)]
struct SavedAccount {
    directory: String,
    credentials: serde_json::Value,
}

impl Store {
    /// The store in `dir` (created, mode 0700, on first write).
    pub fn new(dir: &Path) -> Store {
        Store {
            dir: dir.to_path_buf(),
        }
    }

    /// The certificate file's path.
    pub fn certificate_path(&self) -> PathBuf {
        self.dir.join(CERTIFICATE)
    }

    /// The saved certificate, if there is one that loads and has not expired
    /// at `now` (Unix seconds); why not otherwise (`None`: no file).
    pub fn certificate(&self, now: i64) -> Result<Option<(Arc<CertifiedKey>, CertInfo)>, String> {
        let path = self.certificate_path();
        if !path.exists() {
            return Ok(None);
        }
        let (key, mut info) = certs::load_pair(&path, &path, now)
            .map_err(|e| format!("{}: {}", path.display(), e.reason))?;
        info.source = "acme";
        Ok(Some((key, info)))
    }

    /// Saves an issued chain (PEM) and its key (PEM).
    pub fn save_certificate(&self, chain_pem: &str, key_pem: &str) -> Result<(), String> {
        let mut text = chain_pem.trim_end().to_string();
        text.push('\n');
        text.push_str(key_pem.trim_end());
        text.push('\n');
        self.write(CERTIFICATE, text.as_bytes())
    }

    /// The saved account's credentials (as instant-acme serialises them) for
    /// `directory`; `None` when there is none, or it is another CA's.
    pub fn account(&self, directory: &str) -> Option<instant_acme::AccountCredentials> {
        let text = std::fs::read(self.dir.join(ACCOUNT)).ok()?;
        let saved: SavedAccount = serde_json::from_slice(&text).ok()?;
        if saved.directory != directory {
            return None;
        }
        serde_json::from_value(saved.credentials).ok()
    }

    /// Saves `credentials` as the account for `directory`.
    pub fn save_account(
        &self,
        directory: &str,
        credentials: &instant_acme::AccountCredentials,
    ) -> Result<(), String> {
        let saved = SavedAccount {
            directory: directory.to_string(),
            credentials: serde_json::to_value(credentials).map_err(|e| e.to_string())?,
        };
        let text = serde_json::to_vec_pretty(&saved).map_err(|e| e.to_string())?;
        self.write(ACCOUNT, &text)
    }

    /// Removes the saved account (the CA no longer knows it).
    pub fn forget_account(&self) {
        let _ = std::fs::remove_file(self.dir.join(ACCOUNT));
    }

    /// Writes `name` atomically with mode 0600.
    fn write(&self, name: &str, data: &[u8]) -> Result<(), String> {
        let fail = |what: &str, e: std::io::Error| format!("{what} {}: {e}", self.dir.display());
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|e| fail("cannot create", e))?;
        let tmp = self.dir.join(format!(".{name}.{}.tmp", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let result = (|| {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(data)?;
            f.sync_all()?;
            std::fs::rename(&tmp, self.dir.join(name))?;
            std::fs::File::open(&self.dir)?.sync_all()
        })();
        if let Err(e) = result {
            let _ = std::fs::remove_file(&tmp);
            return Err(fail(&format!("cannot write {name} in"), e));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn certificate_round_trips_with_0600_and_no_temp_left() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(&dir.path().join("acme"));
        assert!(store.certificate(0).unwrap().is_none());
        let c = rcgen::generate_simple_self_signed(vec!["a.test".to_string()]).unwrap();
        store
            .save_certificate(&c.cert.pem(), &c.key_pair.serialize_pem())
            .unwrap();
        let (_, info) = store.certificate(0).unwrap().unwrap();
        assert_eq!(
            (info.names.as_slice(), info.source),
            (&["a.test".to_string()][..], "acme")
        );
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&store.certificate_path()), 0o600);
        assert_eq!(mode(&dir.path().join("acme")), 0o700);
        let names: Vec<_> = std::fs::read_dir(dir.path().join("acme"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [CERTIFICATE]);
        // Expired at `now`: refused with the reason.
        let err = store.certificate(i64::MAX / 2).unwrap_err();
        assert!(err.contains("expired"), "{err}");
    }

    #[test]
    fn account_belongs_to_its_directory() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        std::fs::write(
            dir.path().join(ACCOUNT),
            r#"{"directory":"https://a.test/dir","credentials":{"id":"x"}}"#,
        )
        .unwrap();
        // Not credentials instant-acme accepts, and another CA's anyway.
        assert!(store.account("https://b.test/dir").is_none());
    }
}
