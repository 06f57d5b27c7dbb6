//! Session bundles: an agent's login state (its cache files), carried as
//! base64 of a tar.gz and unpacked into each instance's work directory
//! before the agent starts, so a pool of agents is logged in without anyone
//! clicking through a login per instance.
//!
//! A bundle is configuration, but it is also an archive a person pasted in:
//! it is checked whole before anything is written. Only plain files and
//! directories with relative paths inside the work directory pass; links,
//! devices, absolute paths and `..` are refused, and so is an archive over
//! [`MAX_BYTES`] packed or unpacked. Files are written owner-only (0600,
//! directories 0700) since they hold credentials.

use std::io::Read as _;
use std::path::{Component, Path, PathBuf};

use base64::Engine as _;

/// Cap on the packed archive and, separately, on everything it unpacks to.
pub const MAX_BYTES: u64 = 64 * 1024 * 1024;
/// Cap on archive entries: a bundle is a handful of cache files.
const MAX_ENTRIES: usize = 10_000;

/// Why a bundle was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BundleError {
    #[error("session bundle is not valid base64: {0}")]
    Base64(String),
    #[error("session bundle is larger than {limit} bytes {what}")]
    TooLarge { what: &'static str, limit: u64 },
    #[error("session bundle is not a readable tar.gz: {0}")]
    Archive(String),
    #[error("session bundle entry `{0}` has an absolute path")]
    Absolute(String),
    #[error("session bundle entry `{0}` leaves the work directory (`..`)")]
    Traversal(String),
    #[error("session bundle entry `{path}` is a {kind}; only files and directories are accepted")]
    NotAFile { path: String, kind: String },
    #[error("session bundle has more than {0} entries")]
    TooManyEntries(usize),
    #[error("cannot write session bundle file {path}: {message}")]
    Write { path: String, message: String },
}

/// Decodes the base64 text of a bundle (whitespace and line breaks
/// allowed, as pasted from `base64` output) into the packed archive.
pub fn decode(text: &str) -> Result<Vec<u8>, BundleError> {
    let clean: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    // Base64 is 4/3 the size of what it carries.
    if clean.len() as u64 > MAX_BYTES / 3 * 4 + 4 {
        return Err(BundleError::TooLarge {
            what: "packed",
            limit: MAX_BYTES,
        });
    }
    // Either alphabet, padded or not: whatever tool made the text.
    STANDARD_ANY
        .decode(clean.as_bytes())
        .or_else(|_| URL_SAFE_ANY.decode(clean.as_bytes()))
        .map_err(|e| BundleError::Base64(e.to_string()))
}

const ANY_PADDING: base64::engine::GeneralPurposeConfig =
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent);
const STANDARD_ANY: base64::engine::GeneralPurpose =
    base64::engine::GeneralPurpose::new(&base64::alphabet::STANDARD, ANY_PADDING);
const URL_SAFE_ANY: base64::engine::GeneralPurpose =
    base64::engine::GeneralPurpose::new(&base64::alphabet::URL_SAFE, ANY_PADDING);

/// Checks and unpacks the packed archive `gz` into `dest` (which must
/// exist). Nothing is written unless the whole archive passes.
pub fn extract(gz: &[u8], dest: &Path) -> Result<usize, BundleError> {
    extract_with_limit(gz, dest, MAX_BYTES)
}

fn extract_with_limit(gz: &[u8], dest: &Path, limit: u64) -> Result<usize, BundleError> {
    if gz.len() as u64 > limit {
        return Err(BundleError::TooLarge {
            what: "packed",
            limit,
        });
    }
    // First pass: check everything; second: write. A refused bundle leaves
    // no half-written login state behind.
    let entries = walk(gz, limit, None)?;
    walk(gz, limit, Some(dest))?;
    Ok(entries)
}

fn archive_err(e: std::io::Error) -> BundleError {
    BundleError::Archive(e.to_string())
}

/// Reads every entry, checking it; writes it under `dest` when given.
/// Returns how many entries there are.
fn walk(gz: &[u8], limit: u64, dest: Option<&Path>) -> Result<usize, BundleError> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(gz));
    let mut out = 0usize;
    let mut total: u64 = 0;
    for entry in archive.entries().map_err(archive_err)? {
        if out >= MAX_ENTRIES {
            return Err(BundleError::TooManyEntries(MAX_ENTRIES));
        }
        let mut entry = entry.map_err(archive_err)?;
        let raw = entry.path().map_err(archive_err)?.into_owned();
        let shown = raw.display().to_string();
        let kind = entry.header().entry_type();
        let dir = match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous => false,
            tar::EntryType::Directory => true,
            // Archive-wide metadata, no file of its own.
            tar::EntryType::XGlobalHeader => continue,
            tar::EntryType::Symlink => return Err(not_a_file(shown, "symbolic link")),
            tar::EntryType::Link => return Err(not_a_file(shown, "hard link")),
            tar::EntryType::Char | tar::EntryType::Block => {
                return Err(not_a_file(shown, "device"))
            }
            tar::EntryType::Fifo => return Err(not_a_file(shown, "fifo")),
            other => return Err(not_a_file(shown, &format!("{other:?} entry"))),
        };
        let path = relative(&raw, &shown)?;
        if path.as_os_str().is_empty() {
            continue;
        }
        let declared = entry.header().size().map_err(archive_err)?;
        total = total.saturating_add(declared);
        if total > limit {
            return Err(BundleError::TooLarge {
                what: "unpacked",
                limit,
            });
        }
        // The header may lie about the size: count what is really read.
        let mut data = Vec::new();
        if !dir {
            (&mut entry)
                .take(declared.saturating_add(1))
                .read_to_end(&mut data)
                .map_err(archive_err)?;
        }
        if let Some(dest) = dest {
            write(dest, &path, dir, &data)?;
        }
        out += 1;
    }
    Ok(out)
}

fn not_a_file(path: String, kind: &str) -> BundleError {
    BundleError::NotAFile {
        path,
        kind: kind.to_owned(),
    }
}

/// The entry's path made of plain names only.
fn relative(raw: &Path, shown: &str) -> Result<PathBuf, BundleError> {
    let mut out = PathBuf::new();
    for c in raw.components() {
        match c {
            Component::Normal(name) => out.push(name),
            Component::CurDir => {}
            Component::ParentDir => return Err(BundleError::Traversal(shown.to_owned())),
            Component::RootDir | Component::Prefix(_) => {
                return Err(BundleError::Absolute(shown.to_owned()))
            }
        }
    }
    Ok(out)
}

fn write_err(path: &Path, e: std::io::Error) -> BundleError {
    BundleError::Write {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// Creates `dir` and its missing parents owner-only.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        builder.mode(0o700);
    }
    builder.create(dir)
}

fn write(dest: &Path, rel: &Path, dir: bool, data: &[u8]) -> Result<(), BundleError> {
    let target = dest.join(rel);
    if dir {
        return create_private_dir(&target).map_err(|e| write_err(&target, e));
    }
    if let Some(parent) = target.parent() {
        create_private_dir(parent).map_err(|e| write_err(parent, e))?;
    }
    // Never write through something already there that is not a file
    // (a link left by an earlier agent run would send the write elsewhere).
    if let Ok(meta) = std::fs::symlink_metadata(&target) {
        if !meta.is_file() {
            std::fs::remove_file(&target).map_err(|e| write_err(&target, e))?;
        }
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts.open(&target).map_err(|e| write_err(&target, e))?;
    std::io::Write::write_all(&mut f, data).map_err(|e| write_err(&target, e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| write_err(&target, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp() -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("troupe-bundle-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// Builds a tar.gz by hand so that paths the `tar` builder refuses
    /// (`..`, absolute) can be tested too.
    fn archive(entries: &[(&str, tar::EntryType, &[u8], Option<&str>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        for (path, kind, data, link) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            // Raw name bytes: the checked setters refuse `..` and `/`.
            let name = &mut h.as_old_mut().name;
            name[..path.len()].copy_from_slice(path.as_bytes());
            if let Some(l) = link {
                h.set_link_name(l).unwrap();
            }
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap().finish().unwrap()
    }

    #[test]
    fn good_bundles_unpack_owner_only() {
        let gz = archive(&[
            ("cache/", tar::EntryType::Directory, b"", None),
            (
                "cache/user.json",
                tar::EntryType::Regular,
                b"{\"token\":1}",
                None,
            ),
            ("./top", tar::EntryType::Regular, b"x", None),
        ]);
        let text = base64::engine::general_purpose::STANDARD.encode(&gz);
        // Line breaks as `base64` wraps them are fine.
        let wrapped: String = text
            .as_bytes()
            .chunks(60)
            .map(|c| format!("{}\n", String::from_utf8_lossy(c)))
            .collect();
        let dir = tmp();
        assert_eq!(extract(&decode(&wrapped).unwrap(), &dir).unwrap(), 3);
        let f = dir.join("cache/user.json");
        assert_eq!(std::fs::read(&f).unwrap(), b"{\"token\":1}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&f), 0o600);
            assert_eq!(mode(&dir.join("top")), 0o600);
            assert_eq!(mode(&dir.join("cache")), 0o700);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn refused(entries: &[(&str, tar::EntryType, &[u8], Option<&str>)]) -> (BundleError, PathBuf) {
        let dir = tmp();
        let gz = archive(entries);
        let e = extract(&gz, &dir).unwrap_err();
        (e, dir)
    }

    fn assert_nothing_written(dir: &Path) {
        assert_eq!(
            std::fs::read_dir(dir).unwrap().count(),
            0,
            "files were written"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn traversal_is_refused_before_anything_is_written() {
        let (e, dir) = refused(&[
            ("ok", tar::EntryType::Regular, b"x", None),
            ("a/../../evil", tar::EntryType::Regular, b"x", None),
        ]);
        assert!(matches!(e, BundleError::Traversal(_)), "{e}");
        assert_nothing_written(&dir);
    }

    #[test]
    fn absolute_paths_are_refused() {
        let (e, dir) = refused(&[("/etc/evil", tar::EntryType::Regular, b"x", None)]);
        assert!(matches!(e, BundleError::Absolute(_)), "{e}");
        assert_nothing_written(&dir);
    }

    #[test]
    fn links_and_devices_are_refused() {
        let (e, dir) = refused(&[("l", tar::EntryType::Symlink, b"", Some("/etc/passwd"))]);
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert_nothing_written(&dir);
        let (e, dir) = refused(&[
            ("f", tar::EntryType::Regular, b"x", None),
            ("h", tar::EntryType::Link, b"", Some("f")),
        ]);
        assert!(e.to_string().contains("hard link"), "{e}");
        assert_nothing_written(&dir);
        let (e, dir) = refused(&[("d", tar::EntryType::Char, b"", None)]);
        assert!(e.to_string().contains("device"), "{e}");
        assert_nothing_written(&dir);
        let (e, dir) = refused(&[("p", tar::EntryType::Fifo, b"", None)]);
        assert!(e.to_string().contains("fifo"), "{e}");
        assert_nothing_written(&dir);
    }

    #[test]
    fn oversize_bundles_are_refused_packed_and_unpacked() {
        let dir = tmp();
        // Compresses to almost nothing, unpacks past the limit.
        let zeros = vec![0u8; 4096];
        let gz = archive(&[
            ("a", tar::EntryType::Regular, &zeros, None),
            ("b", tar::EntryType::Regular, &zeros, None),
        ]);
        let e = extract_with_limit(&gz, &dir, 6000).unwrap_err();
        assert_eq!(
            e,
            BundleError::TooLarge {
                what: "unpacked",
                limit: 6000
            }
        );
        let e = extract_with_limit(&gz, &dir, 10).unwrap_err();
        assert!(
            matches!(e, BundleError::TooLarge { what: "packed", .. }),
            "{e}"
        );
        assert_nothing_written(&dir);
        let huge = "A".repeat((MAX_BYTES / 3 * 4 + 8) as usize);
        assert!(matches!(decode(&huge), Err(BundleError::TooLarge { .. })));
    }

    #[test]
    fn garbage_is_refused() {
        assert!(matches!(decode("not base64!"), Err(BundleError::Base64(_))));
        let dir = tmp();
        let e = extract(b"plain text, not gzip", &dir).unwrap_err();
        assert!(matches!(e, BundleError::Archive(_)), "{e}");
        assert_nothing_written(&dir);
    }
}
