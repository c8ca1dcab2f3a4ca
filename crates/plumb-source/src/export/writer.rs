//! Writing checked entries through directory handles, never through a path component the
//! export did not create.

use std::collections::HashSet;
use std::io::Write as _;
use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{Mode, OFlags};

use super::reuse::Prior;
use super::{Entry, Error, Kind, Result};

/// Writes entries (sorted by path) below a destination directory through directory handles:
/// each directory is created by the writer and opened without following links, and each file
/// or link is created exclusively in its parent's handle. A path component the writer did not
/// create (a symlink, or anything already there) can therefore never be written through.
pub(super) struct Writer {
    dest: String,
    root: OwnedFd,
    /// The directories of the current path below the root, as (name, handle); entries sorted
    /// by path visit each directory's contents contiguously, so one open chain suffices.
    open: Vec<(String, OwnedFd)>,
    /// Directories created so far, so that coming back to one is detected.
    created: HashSet<String>,
    /// An earlier export whose unchanged files are linked instead of written.
    prior: Option<Prior>,
    /// Files linked from it.
    pub(super) linked: usize,
}

const DIR_FLAGS: OFlags = OFlags::DIRECTORY
    .union(OFlags::NOFOLLOW)
    .union(OFlags::RDONLY)
    .union(OFlags::CLOEXEC);

/// Closes the handles of `open` (the directories of the previous path, outermost first) that
/// are not on the path `dirs`; returns how many are.
pub(super) fn keep_common<T>(open: &mut Vec<(String, T)>, dirs: &[&str]) -> usize {
    let common = open
        .iter()
        .zip(dirs)
        .take_while(|((open, _), want)| open == *want)
        .count();
    open.truncate(common);
    common
}

impl Writer {
    pub(super) fn open(dest: &Path, prior: Option<Prior>) -> Result<Self> {
        let shown = dest.display().to_string();
        let io = |source: std::io::Error| Error::Io {
            path: shown.clone(),
            source,
        };
        std::fs::create_dir_all(dest).map_err(io)?;
        let root = rustix::fs::openat(rustix::fs::CWD, dest, DIR_FLAGS, Mode::empty())
            .map_err(|e| io(e.into()))?;
        let mut listing = std::fs::read_dir(dest).map_err(io)?;
        if listing.next().is_some() {
            return Err(Error::DestinationNotEmpty { path: shown });
        }
        Ok(Self {
            dest: shown,
            root,
            open: Vec::new(),
            created: HashSet::new(),
            prior,
            linked: 0,
        })
    }

    fn io(&self, path: &str) -> impl Fn(rustix::io::Errno) -> Error + use<> {
        let path = format!("{}/{path}", self.dest);
        move |e| Error::Io {
            path: path.clone(),
            source: e.into(),
        }
    }

    /// The handle of directory `dirs` (components below the root), creating what is missing.
    fn dir(&mut self, dirs: &[&str]) -> Result<()> {
        let common = keep_common(&mut self.open, dirs);
        for i in common..dirs.len() {
            let rel = dirs[..=i].join("/");
            if !self.created.insert(rel.clone()) {
                // Sorted entries never return to a directory; if they did, the tree was not
                // what the checks saw.
                return Err(Error::Io {
                    path: format!("{}/{rel}", self.dest),
                    source: std::io::Error::other("directory visited twice"),
                });
            }
            let parent = self.open.last().map_or(&self.root, |(_, fd)| fd);
            rustix::fs::mkdirat(parent, dirs[i], Mode::from_raw_mode(0o755))
                .map_err(self.io(&rel))?;
            let fd = rustix::fs::openat(parent, dirs[i], DIR_FLAGS, Mode::empty())
                .map_err(self.io(&rel))?;
            self.open.push((dirs[i].to_owned(), fd));
        }
        Ok(())
    }

    pub(super) fn write(&mut self, entry: &Entry, content: &[u8]) -> Result<()> {
        let mut parts: Vec<&str> = entry.path.split('/').collect();
        let name = parts.pop().unwrap_or_default();
        self.dir(&parts)?;
        let parent = self.open.last().map_or(&self.root, |(_, fd)| fd);
        if let Some(prior) = &mut self.prior
            && prior.link(entry, &parts, name, content, parent)
        {
            self.linked += 1;
            return Ok(());
        }
        let io = self.io(&entry.path);
        match entry.kind {
            Kind::Link => {
                let target = String::from_utf8_lossy(content).into_owned();
                rustix::fs::symlinkat(target.as_str(), parent, name).map_err(io)?;
            }
            Kind::File { executable } => {
                let fd = rustix::fs::openat(
                    parent,
                    name,
                    OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::WRONLY
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(&io)?;
                let mode = if executable { 0o755 } else { 0o644 };
                rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode)).map_err(&io)?;
                let mut file = std::fs::File::from(fd);
                file.write_all(content).map_err(|source| Error::Io {
                    path: format!("{}/{}", self.dest, entry.path),
                    source,
                })?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gix::ObjectId;

    #[test]
    fn the_writer_never_writes_through_what_it_did_not_create() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dest = tmp.path().join("dest");
        let mut writer = Writer::open(&dest, None).expect("writer");
        let entry = |path: &str, kind| Entry {
            path: path.to_owned(),
            kind,
            id: ObjectId::null(gix::hash::Kind::Sha1),
        };
        // What a tree with `s -> ..` beside a tree `s` would make a path-joining writer do.
        writer
            .write(&entry("s", Kind::Link), b"..")
            .expect("a link is written");
        let err = writer
            .write(&entry("s/x", Kind::File { executable: false }), b"pwned")
            .expect_err("writing below a link is refused");
        assert!(matches!(err, Error::Io { .. }), "{err}");
        assert!(!tmp.path().join("x").exists());
        // A second entry of the same name is refused too, never overwritten.
        writer
            .write(&entry("f", Kind::File { executable: false }), b"one")
            .expect("a file is written");
        writer
            .write(&entry("f", Kind::File { executable: false }), b"two")
            .expect_err("no overwrite");
        assert_eq!(std::fs::read(dest.join("f")).expect("f"), b"one");
    }
}
