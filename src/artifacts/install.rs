//! Placing a downloaded build: the archive's SHA-256 is checked against the signed
//! manifest, it is unpacked under a temporary name beside its final place
//! (`engines/<engine>/.partial-<version>-…`), its executable checked, and only then
//! renamed to `engines/<engine>/<version>/` — nothing partial is ever at the final
//! path, so a directory there is a complete build. (Blocking file work: run it on the
//! blocking pool.)
//!
//! Entries are regular files, directories and symbolic links whose target stays
//! inside the build; a path or a link leaving it, a hard link or a device is refused,
//! and no file keeps a set-user-ID, set-group-ID or sticky bit.
//!
//! The signed manifest goes with the build, in `.ker-agent/` (a name no archive may
//! use): an agent that starts again reads it, checks its signature against the keys
//! it trusts now, and runs the build without fetching it again.

use super::manifest::{self, ArtifactManifest};
use super::signature::TrustedKeys;
use crate::engine::EngineKind;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// While unpacking, the free space is looked at every this many bytes written…
const ROOM_CHECK_EVERY: u64 = 64 << 20;
/// …and the unpacking stops when less than this is left.
pub const MIN_FREE_BYTES: u64 = 64 << 20;

/// The directory inside a build that holds its signed manifest.
pub const OWN_DIR: &str = ".ker-agent";
const MANIFEST_FILE: &str = "manifest.json";
const SIGNATURE_FILE: &str = "manifest.json.minisig";
const ORIGIN_FILE: &str = "origin";

/// A build in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    pub dir: PathBuf,
    pub executable: PathBuf,
    /// The archive's SHA-256, from the signed manifest.
    pub sha256: String,
    /// The store URL it came from.
    pub origin: String,
}

/// The manifest as the store served it, with its signature, and where it came from.
#[derive(Debug, Clone)]
pub struct Signed {
    pub manifest: Vec<u8>,
    pub signature: String,
    pub origin: String,
}

/// A refused or failed installation, naming the archive, the entry or the path.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("{archive} has SHA-256 {found}, and its signed manifest says {expected}: refused")]
    Checksum {
        archive: PathBuf,
        found: String,
        expected: String,
    },
    #[error("{archive}: the entry {entry:?} is refused: {why}")]
    Refused {
        archive: PathBuf,
        entry: String,
        why: &'static str,
    },
    #[error("{archive} is not a whole .tar.gz: {source}")]
    Read {
        archive: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("unpacking {archive} was stopped: {why}")]
    Stopped { archive: PathBuf, why: String },
    #[error("{archive} has no executable file {executable:?}, which its manifest names")]
    NoExecutable { archive: PathBuf, executable: String },
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_error<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> InstallError + 'a {
    move |source| InstallError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Where the build of `engine` `version` lives under `engines_dir`.
pub fn build_dir(engines_dir: &Path, engine: &str, version: &str) -> PathBuf {
    engines_dir.join(engine).join(version)
}

/// Whether `found`, the SHA-256 of `archive`, is the one its manifest names.
pub fn check_checksum(archive: &Path, found: &str, manifest: &ArtifactManifest) -> Result<(), InstallError> {
    if found != manifest.sha256 {
        return Err(InstallError::Checksum {
            archive: archive.to_path_buf(),
            found: found.to_string(),
            expected: manifest.sha256.clone(),
        });
    }
    Ok(())
}

/// Unpacks `archive`, whose checksum was checked, into its place under `engines_dir`,
/// with its signed manifest. A build already in place is kept as it is. Setting
/// `cancel` stops the unpacking at the next entry (and removes what it wrote).
pub fn place(
    archive: &Path,
    manifest: &ArtifactManifest,
    signed: &Signed,
    engines_dir: &Path,
    cancel: &AtomicBool,
) -> Result<Installed, InstallError> {
    let target = build_dir(engines_dir, &manifest.engine, &manifest.version);
    let installed = Installed {
        executable: target.join(&manifest.executable),
        dir: target.clone(),
        sha256: manifest.sha256.clone(),
        origin: signed.origin.clone(),
    };
    if target.is_dir() {
        return Ok(installed);
    }
    let parent = engines_dir.join(&manifest.engine);
    std::fs::create_dir_all(&parent).map_err(io_error("create", &parent))?;
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let temporary = parent.join(format!(".partial-{}-{}-{nonce}", manifest.version, std::process::id()));
    let result = unpack(archive, &temporary, cancel).and_then(|()| {
        check_executable(&temporary, archive, &manifest.executable)?;
        keep_signed(&temporary, signed)?;
        match std::fs::rename(&temporary, &target) {
            Ok(()) => Ok(()),
            // Placed meanwhile by another installation of the same build.
            Err(_) if target.is_dir() => Ok(()),
            Err(e) => Err(io_error("rename into place", &target)(e)),
        }
    });
    if temporary.exists() {
        let _ = std::fs::remove_dir_all(&temporary);
    }
    result.map(|()| installed)
}

/// Writes the signed manifest into the build's own directory, synced with the build's
/// files: the rename that follows makes the build visible only when all is on disk.
fn keep_signed(dir: &Path, signed: &Signed) -> Result<(), InstallError> {
    let own = dir.join(OWN_DIR);
    std::fs::create_dir(&own).map_err(io_error("create", &own))?;
    for (name, bytes) in [
        (MANIFEST_FILE, signed.manifest.as_slice()),
        (SIGNATURE_FILE, signed.signature.as_bytes()),
        (ORIGIN_FILE, signed.origin.as_bytes()),
    ] {
        let path = own.join(name);
        std::fs::write(&path, bytes).map_err(io_error("write", &path))?;
    }
    sync_tree(dir)
}

/// fsyncs every file and directory under `dir` (and `dir`), so that a build renamed
/// into place survives a crash whole.
fn sync_tree(dir: &Path) -> Result<(), InstallError> {
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        for entry in std::fs::read_dir(&current).map_err(io_error("list", &current))? {
            let entry = entry.map_err(io_error("list", &current))?;
            let kind = entry.file_type().map_err(io_error("inspect", &entry.path()))?;
            if kind.is_dir() {
                pending.push(entry.path());
            } else if kind.is_file() {
                let path = entry.path();
                std::fs::File::open(&path)
                    .and_then(|f| f.sync_all())
                    .map_err(io_error("sync", &path))?;
            }
        }
        std::fs::File::open(&current)
            .and_then(|f| f.sync_all())
            .map_err(io_error("sync", &current))?;
    }
    Ok(())
}

/// A build already in place for `engine` `version`: its kept manifest must still be
/// signed by a key trusted now, and its executable must be there. `Ok(None)`: none.
pub fn read_installed(
    engines_dir: &Path,
    engine: EngineKind,
    version: &str,
    keys: &TrustedKeys,
) -> Result<Option<Installed>, String> {
    let dir = build_dir(engines_dir, engine.as_str(), version);
    if !dir.is_dir() {
        return Ok(None);
    }
    let own = dir.join(OWN_DIR);
    let read = |name: &str| {
        let path = own.join(name);
        std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))
    };
    let bytes = read(MANIFEST_FILE)?;
    let signature = String::from_utf8_lossy(&read(SIGNATURE_FILE)?).into_owned();
    let origin = String::from_utf8_lossy(&read(ORIGIN_FILE)?).trim().to_string();
    let what = own.join(MANIFEST_FILE).display().to_string();
    keys.verify(&what, &bytes, &signature).map_err(|e| e.to_string())?;
    let manifest = manifest::parse(&what, &bytes, engine, version).map_err(|e| e.to_string())?;
    check_executable(&dir, &dir, &manifest.executable).map_err(|e| e.to_string())?;
    Ok(Some(Installed {
        executable: dir.join(&manifest.executable),
        dir,
        sha256: manifest.sha256,
        origin,
    }))
}

fn unpack(archive: &Path, into: &Path, cancel: &AtomicBool) -> Result<(), InstallError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .mode(0o755)
        .create(into)
        .map_err(io_error("create", into))?;
    let file = std::fs::File::open(archive).map_err(io_error("open", archive))?;
    let read = |source| InstallError::Read {
        archive: archive.to_path_buf(),
        source,
    };
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let mut written = 0u64;
    let mut checked_room_at = 0u64;
    // Whether `into`'s filesystem has room for `coming` more bytes and still the
    // bytes kept free.
    let room_for = |coming: u64, written: u64| -> Result<(), InstallError> {
        let stats = crate::sys::statvfs(into).map_err(io_error("statvfs", into))?;
        if stats.available_bytes >= coming.saturating_add(MIN_FREE_BYTES) {
            return Ok(());
        }
        Err(InstallError::Stopped {
            archive: archive.to_path_buf(),
            why: format!(
                "{written} bytes unpacked, {coming} more to come, and {} has {} bytes free, less than that and the {MIN_FREE_BYTES} kept free",
                into.display(),
                stats.available_bytes
            ),
        })
    };
    for entry in tar.entries().map_err(read)? {
        if cancel.load(Ordering::Relaxed) {
            return Err(InstallError::Stopped {
                archive: archive.to_path_buf(),
                why: "the fetch ran out of time ([artifacts] timeout)".into(),
            });
        }
        // A small archive can unpack to a great deal: the room is checked as it grows,
        // so that a build never fills the filesystem the instances' data lives on.
        if written - checked_room_at >= ROOM_CHECK_EVERY {
            checked_room_at = written;
            room_for(0, written)?;
        }
        let mut entry = entry.map_err(read)?;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let refuse = |why| InstallError::Refused {
            archive: archive.to_path_buf(),
            entry: raw.clone(),
            why,
        };
        let Some(relative) = normal(&raw) else {
            // The archive's own top directory, `./`, is no entry of the build.
            if raw.trim_end_matches('/') == "." {
                continue;
            }
            return Err(refuse("not a relative path inside the build"));
        };
        if relative.starts_with(OWN_DIR) {
            return Err(refuse("a name the agent keeps for the signed manifest"));
        }
        let path = into.join(&relative);
        // A link made by an earlier entry must not lead a later one elsewhere: no
        // entry goes through a link (nor replaces one).
        if through_link(into, &relative) {
            return Err(refuse("a path through a link of the archive"));
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io_error("create", parent))?;
        }
        let mode = entry.header().mode().map_err(read)? & 0o777;
        match entry.header().entry_type() {
            tar::EntryType::Directory => {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(&path)
                    .map_err(io_error("create", &path))?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                use std::os::unix::fs::OpenOptionsExt;
                // One entry alone can be large (what its header says is what is read):
                // its room is checked before it is written.
                let size = entry.header().size().map_err(read)?;
                if size >= ROOM_CHECK_EVERY {
                    room_for(size, written)?;
                }
                let mut out = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(mode)
                    .open(&path)
                    .map_err(io_error("create", &path))?;
                written += io::copy(&mut entry, &mut out).map_err(read)?;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(read)?
                    .ok_or_else(|| refuse("a link without a target"))?
                    .into_owned();
                if !link_stays_inside(&relative, &target) {
                    return Err(refuse("a link that leads out of the build"));
                }
                std::os::unix::fs::symlink(&target, &path).map_err(io_error("create", &path))?;
            }
            _ => return Err(refuse("neither a file, a directory nor a link inside the build")),
        }
    }
    Ok(())
}

/// The executable named by the manifest is a regular file (through links inside the
/// build) that can be executed.
fn check_executable(dir: &Path, archive: &Path, executable: &str) -> Result<(), InstallError> {
    use std::os::unix::fs::PermissionsExt;
    let missing = || InstallError::NoExecutable {
        archive: archive.to_path_buf(),
        executable: executable.to_string(),
    };
    let resolved = std::fs::canonicalize(dir.join(executable)).map_err(|_| missing())?;
    let root = std::fs::canonicalize(dir).map_err(io_error("resolve", dir))?;
    let meta = std::fs::metadata(&resolved).map_err(|_| missing())?;
    if !resolved.starts_with(&root) || !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return Err(missing());
    }
    Ok(())
}

/// Whether any existing part of `relative` under `root` (the entry's own path
/// included) is a symbolic link; nothing is followed.
fn through_link(root: &Path, relative: &Path) -> bool {
    let mut path = root.to_path_buf();
    relative.components().any(|part| {
        path.push(part);
        std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink())
    })
}

/// `raw` as normal components only.
fn normal(raw: &str) -> Option<PathBuf> {
    let trimmed = raw.trim_start_matches("./").trim_end_matches('/');
    let path = Path::new(trimmed);
    let ok = !trimmed.is_empty()
        && !trimmed.chars().any(char::is_control)
        && path.components().all(|c| matches!(c, Component::Normal(_)));
    ok.then(|| path.to_path_buf())
}

/// Whether a link at `link` (relative to the build) pointing to `target` stays inside
/// the build, by its words alone (nothing on disk is followed).
fn link_stays_inside(link: &Path, target: &Path) -> bool {
    if target.is_absolute() {
        return false;
    }
    let mut depth = link.components().count().saturating_sub(1) as i64;
    for part in target.components() {
        match part {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            _ => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    enum Item<'a> {
        File(&'a str, &'a [u8], u32),
        Link(&'a str, &'a str),
        HardLink(&'a str, &'a str),
    }

    fn tar_gz(items: &[Item]) -> Vec<u8> {
        let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
        for item in items {
            let mut header = tar::Header::new_gnu();
            match item {
                Item::File(path, data, mode) => {
                    header.set_size(data.len() as u64);
                    header.set_mode(*mode);
                    header.set_entry_type(tar::EntryType::Regular);
                    // Written by hand: the builder refuses some of these paths.
                    let name = path.as_bytes();
                    header.as_old_mut().name[..name.len()].copy_from_slice(name);
                    header.set_cksum();
                    builder.append(&header, *data).unwrap();
                }
                Item::Link(path, target) | Item::HardLink(path, target) => {
                    header.set_size(0);
                    header.set_mode(0o777);
                    let kind = match item {
                        Item::Link(..) => tar::EntryType::Symlink,
                        _ => tar::EntryType::Link,
                    };
                    header.set_entry_type(kind);
                    builder.append_link(&mut header, path, target).unwrap();
                }
            }
        }
        builder.into_inner().unwrap().finish().unwrap()
    }

    fn manifest(sha256: &str) -> ArtifactManifest {
        ArtifactManifest {
            engine: "redis".into(),
            version: "7.2".into(),
            archive: "redis-7.2.tar.gz".into(),
            sha256: sha256.into(),
            executable: "bin/redis-server".into(),
        }
    }

    /// What a fetch does with a downloaded archive: its checksum, then `place`.
    fn install(
        archive: &Path,
        manifest: &ArtifactManifest,
        signed: &Signed,
        engines_dir: &Path,
    ) -> Result<Installed, InstallError> {
        let found = crate::digest::sha256_hex(&std::fs::read(archive).unwrap());
        check_checksum(archive, &found, manifest)?;
        place(archive, manifest, signed, engines_dir, &AtomicBool::new(false))
    }

    fn signed() -> Signed {
        Signed {
            manifest: b"{}".to_vec(),
            signature: "sig".into(),
            origin: "https://store/redis/7.2/manifest.json".into(),
        }
    }

    fn try_install(items: &[Item]) -> (tempfile::TempDir, Result<Installed, InstallError>) {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("redis-7.2.tar.gz");
        let bytes = tar_gz(items);
        std::fs::write(&archive, &bytes).unwrap();
        let sha = crate::digest::sha256_hex(&bytes);
        let result = install(&archive, &manifest(&sha), &signed(), &dir.path().join("engines"));
        (dir, result)
    }

    fn leftovers(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir.join("engines/redis"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn a_build_is_unpacked_checked_and_renamed_into_place() {
        let (dir, result) = try_install(&[
            Item::File("bin/redis-server-7.2.4", b"#!/bin/sh\n", 0o4755),
            Item::Link("bin/redis-server", "redis-server-7.2.4"),
            Item::Link("lib/current", "../bin"),
            Item::File("README", b"hi", 0o644),
        ]);
        let installed = result.unwrap();
        assert_eq!(installed.dir, dir.path().join("engines/redis/7.2"));
        assert_eq!(
            installed.executable,
            dir.path().join("engines/redis/7.2/bin/redis-server")
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&installed.executable).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, 0o755, "no set-user-ID bit");
        assert_eq!(leftovers(dir.path()), ["7.2"]);
        let kept = std::fs::read_to_string(installed.dir.join(".ker-agent/origin")).unwrap();
        assert_eq!(kept, "https://store/redis/7.2/manifest.json");
    }

    #[test]
    fn a_wrong_checksum_unpacks_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("a.tar.gz");
        std::fs::write(&archive, tar_gz(&[Item::File("bin/redis-server", b"x", 0o755)])).unwrap();
        let error = install(
            &archive,
            &manifest(&"0".repeat(64)),
            &signed(),
            &dir.path().join("engines"),
        )
        .unwrap_err();
        assert!(matches!(error, InstallError::Checksum { .. }), "{error}");
        assert!(leftovers(dir.path()).is_empty());
    }

    #[test]
    fn entries_leaving_the_build_are_refused_and_nothing_is_left() {
        let cases: Vec<Vec<Item>> = vec![
            vec![Item::File("../escape", b"x", 0o755)],
            vec![Item::File("/etc/escape", b"x", 0o755)],
            vec![Item::Link("bin/redis-server", "/usr/bin/redis-server")],
            vec![Item::Link("bin/up", "../../x")],
            vec![Item::HardLink("bin/redis-server", "/etc/passwd")],
            vec![Item::File(".ker-agent/manifest.json", b"{}", 0o644)],
            // Each link stays inside by its words; together they lead out.
            vec![
                Item::Link("a/b", ".."),
                Item::Link("a/b/c", ".."),
                Item::File("c/escape", b"x", 0o644),
            ],
            vec![Item::Link("bin/x", "y"), Item::File("bin/x", b"x", 0o755)],
        ];
        for items in cases {
            let (dir, result) = try_install(&items);
            let error = result.unwrap_err();
            assert!(matches!(error, InstallError::Refused { .. }), "{error}");
            assert!(leftovers(dir.path()).is_empty(), "{:?}", leftovers(dir.path()));
            assert!(!dir.path().join("escape").exists());
        }
    }

    #[test]
    fn a_missing_or_non_executable_executable_is_refused() {
        let (_dir, result) = try_install(&[Item::File("bin/other", b"x", 0o755)]);
        assert!(matches!(result, Err(InstallError::NoExecutable { .. })));
        let (_dir, result) = try_install(&[Item::File("bin/redis-server", b"x", 0o644)]);
        assert!(matches!(result, Err(InstallError::NoExecutable { .. })));
    }

    #[test]
    fn a_truncated_archive_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("a.tar.gz");
        let bytes = tar_gz(&[Item::File("bin/redis-server", &[7u8; 100_000], 0o755)]);
        let cut = &bytes[..bytes.len() / 2];
        std::fs::write(&archive, cut).unwrap();
        let sha = crate::digest::sha256_hex(cut);
        let error = install(&archive, &manifest(&sha), &signed(), &dir.path().join("engines")).unwrap_err();
        assert!(matches!(error, InstallError::Read { .. }), "{error}");
        assert!(leftovers(dir.path()).is_empty());
    }

    #[test]
    fn one_entry_larger_than_the_free_space_is_refused_before_it_is_written() {
        use std::io::Write;
        // A header announcing a petabyte; what follows is never read.
        let mut header = tar::Header::new_gnu();
        header.set_path("bin/redis-server").unwrap();
        header.set_size(1 << 50);
        header.set_mode(0o755);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(header.as_bytes()).unwrap();
        gz.write_all(&[0u8; 1024]).unwrap();
        let bytes = gz.finish().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("a.tar.gz");
        std::fs::write(&archive, &bytes).unwrap();
        let sha = crate::digest::sha256_hex(&bytes);
        let error = install(&archive, &manifest(&sha), &signed(), &dir.path().join("engines")).unwrap_err();
        assert!(matches!(error, InstallError::Stopped { .. }), "{error}");
        assert!(
            error.to_string().contains(&format!("{} more to come", 1u64 << 50)),
            "{error}"
        );
        assert!(leftovers(dir.path()).is_empty());
    }

    #[test]
    fn an_installed_build_is_trusted_only_with_its_signature_by_a_trusted_key() {
        use std::os::unix::fs::PermissionsExt;
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/artifacts");
        let read = |name: &str| std::fs::read_to_string(fixtures.join(name)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let engines = dir.path().join("engines");
        let build = engines.join("redis/7.2");
        std::fs::create_dir_all(build.join(OWN_DIR)).unwrap();
        std::fs::create_dir_all(build.join("bin")).unwrap();
        std::fs::write(build.join("bin/redis-server"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(build.join("bin/redis-server"), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(build.join(OWN_DIR).join(MANIFEST_FILE), read("manifest.json")).unwrap();
        std::fs::write(build.join(OWN_DIR).join(SIGNATURE_FILE), read("manifest.json.minisig")).unwrap();
        std::fs::write(
            build.join(OWN_DIR).join(ORIGIN_FILE),
            "https://s/redis/7.2/manifest.json",
        )
        .unwrap();

        let trusted = TrustedKeys::parse([read("a.pub").as_str()]).unwrap();
        let installed = read_installed(&engines, EngineKind::Redis, "7.2", &trusted)
            .unwrap()
            .unwrap();
        assert_eq!(installed.executable, build.join("bin/redis-server"));
        assert_eq!(installed.origin, "https://s/redis/7.2/manifest.json");
        assert!(installed.sha256.starts_with("2d711642"));
        assert_eq!(read_installed(&engines, EngineKind::Redis, "7.9", &trusted), Ok(None));

        let other = TrustedKeys::parse([read("b.pub").as_str()]).unwrap();
        let error = read_installed(&engines, EngineKind::Redis, "7.2", &other).unwrap_err();
        assert!(error.contains("not in [artifacts] public_keys"), "{error}");

        std::fs::remove_file(build.join("bin/redis-server")).unwrap();
        let error = read_installed(&engines, EngineKind::Redis, "7.2", &trusted).unwrap_err();
        assert!(error.contains("no executable file"), "{error}");
    }

    #[test]
    fn links_are_judged_by_their_words() {
        assert!(link_stays_inside(Path::new("bin/x"), Path::new("y")));
        assert!(link_stays_inside(Path::new("bin/x"), Path::new("../lib/y")));
        assert!(!link_stays_inside(Path::new("bin/x"), Path::new("../../y")));
        assert!(!link_stays_inside(Path::new("x"), Path::new("../y")));
        assert!(!link_stays_inside(Path::new("x"), Path::new("/y")));
    }
}
