//! The admin token (SPEC "Admin hardening"): env `LB_ADMIN_TOKEN`, else the
//! contents of `admin.token_file`, else a random one that lb writes to that
//! file. A generated token never reaches the log, which log collectors copy
//! far and wide: lb logs where the file is, and the file is lb's user's alone
//! (mode 0600, created new, never through a symlink someone left there).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use rand::Rng;

/// Where the admin token came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// `LB_ADMIN_TOKEN`.
    Env,
    /// An existing `admin.token_file`.
    File,
    /// Generated at start and written to `admin.token_file`.
    Generated,
    /// Generated at start but not saved (why): nobody knows it, so every
    /// `/admin/*` call answers `401` until lb restarts with a token.
    Unsaved(String),
}

/// Picks the admin token: env `LB_ADMIN_TOKEN`, else `token_file` if it
/// exists, else a random one written to `token_file`. An existing token file
/// that cannot be read, or is empty, is an error (the operator's file). A
/// token file that cannot be created is not: lb serves without a usable
/// admin token ([`TokenSource::Unsaved`]) rather than not at all.
pub fn resolve_token(token_file: Option<&Path>) -> Result<(String, TokenSource), String> {
    if let Ok(t) = std::env::var("LB_ADMIN_TOKEN") {
        if !t.trim().is_empty() {
            return Ok((t.trim().to_string(), TokenSource::Env));
        }
    }
    let Some(path) = token_file else {
        let why = "no admin.token_file to write it to".to_string();
        return Ok((generate(), TokenSource::Unsaved(why)));
    };
    if let Some(t) = read(path)? {
        return Ok((t, TokenSource::File));
    }
    let t = generate();
    match create(path, &t) {
        Ok(()) => Ok((t, TokenSource::Generated)),
        // Another lb on the same config (an upgrade's successor) was first:
        // share its token. Still unreadable: a dangling symlink is there.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => match read(path)? {
            Some(t) => Ok((t, TokenSource::File)),
            None => Ok((generate(), TokenSource::Unsaved(e.to_string()))),
        },
        Err(e) => Ok((t, TokenSource::Unsaved(e.to_string()))),
    }
}

/// [`resolve_token`], logging where the token came from (never the token).
pub fn token(token_file: Option<&Path>) -> Result<String, String> {
    let (token, source) = resolve_token(token_file)?;
    let path = token_file
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    match source {
        TokenSource::Env => tracing::info!("admin token from LB_ADMIN_TOKEN"),
        TokenSource::File => tracing::info!(path = %path, "admin token read from admin.token_file"),
        TokenSource::Generated => tracing::info!(path = %path,
            "admin token generated and written to admin.token_file (mode 0600); read it there"),
        TokenSource::Unsaved(why) => tracing::error!(path = %path, error = %why,
            "admin token generated but not saved: every /admin/* call answers 401; \
             set LB_ADMIN_TOKEN or a writable admin.token_file and restart"),
    }
    Ok(token)
}

/// 128 random bits as 32 hex digits.
fn generate() -> String {
    format!("{:032x}", rand::thread_rng().gen::<u128>())
}

/// The token in `path`; `None` when there is no such file.
fn read(path: &Path) -> Result<Option<String>, String> {
    match std::fs::read_to_string(path) {
        Ok(t) if t.trim().is_empty() => {
            Err(format!("admin.token_file: {} is empty", path.display()))
        }
        Ok(t) => Ok(Some(t.trim().to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("admin.token_file: {}: {e}", path.display())),
    }
}

/// Writes `token` to a new file at `path`, mode 0600. `O_CREAT | O_EXCL`:
/// an existing file or symlink there (even a dangling one) is an error, never
/// opened or followed. A failed write removes the file.
fn create(path: &Path, token: &str) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    let written = f
        .write_all(format!("{token}\n").as_bytes())
        .and_then(|()| f.sync_all());
    if let Err(e) = written {
        drop(f);
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    // These tests never set LB_ADMIN_TOKEN (it would leak into other tests of
    // this process); they call the parts after the env lookup, except one
    // that only runs when the variable is unset.

    #[test]
    fn a_generated_token_goes_to_a_new_private_file_and_is_reused() {
        if std::env::var_os("LB_ADMIN_TOKEN").is_some() {
            return; // resolve_token would answer Env
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lb-admin-token");
        let (t, source) = resolve_token(Some(&path)).unwrap();
        assert_eq!(source, TokenSource::Generated);
        assert_eq!(t.len(), 32);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), format!("{t}\n"));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // The next start reads the same token.
        assert_eq!(resolve_token(Some(&path)).unwrap(), (t, TokenSource::File));
    }

    #[test]
    fn never_written_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("elsewhere");
        let path = dir.path().join("lb-admin-token");
        std::os::unix::fs::symlink(&target, &path).unwrap();
        let e = create(&path, "secret").unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists);
        assert!(!target.exists(), "wrote through the symlink");
    }

    #[test]
    fn an_existing_file_is_read_trimmed_and_an_empty_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        assert_eq!(read(&path).unwrap(), None);
        std::fs::write(&path, "  s3cret\n").unwrap();
        assert_eq!(read(&path).unwrap().as_deref(), Some("s3cret"));
        std::fs::write(&path, "\n").unwrap();
        assert!(read(&path).unwrap_err().contains("is empty"));
    }

    #[test]
    fn the_default_token_file_sits_next_to_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("lb.toml");
        std::fs::write(&cfg, "[[backends]]\nname = \"a\"\naddr = \"127.0.0.1:1\"\n").unwrap();
        let c = crate::config::Config::load(&cfg).unwrap();
        assert_eq!(
            c.admin.token_file.as_deref(),
            Some(dir.path().join("lb-admin-token").as_path())
        );
    }
}
