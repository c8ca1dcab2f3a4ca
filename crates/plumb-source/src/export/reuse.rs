//! Reusing an earlier export's files: a file whose path, mode and blob did not change since the
//! earlier export of the same source is hard-linked from it instead of being created again.
//!
//! Creating a file is what an export of a large tree spends its time on (inode allocation, on
//! ext4 slower the more files were deleted recently, i.e. after every replaced artifact), while
//! a commit usually changes a handful of files. A link is made only after the earlier file,
//! opened through directory handles without following links, is a regular file with the
//! expected permission bits whose bytes equal the blob's; and the link is checked to be that
//! very inode afterwards. Anything else (a missing or replaced file, a link, another
//! filesystem) falls back to writing the file, so the result is the same as a fresh export.

use std::io::Read as _;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;

use rustix::fs::{AtFlags, FileType, Mode, OFlags};

use super::{Entry, ExportedFile, Kind};

/// An earlier export of the same source: its directory (unchanged since, and kept for the
/// duration of the export by the caller) and what it holds ([`super::ExportedTree::entries`]).
#[derive(Clone, Debug)]
pub struct Reuse {
    /// The earlier export's root directory.
    pub dir: PathBuf,
    /// Its files, sorted by path.
    pub entries: Arc<[ExportedFile]>,
}

const DIR_FLAGS: OFlags = OFlags::DIRECTORY
    .union(OFlags::NOFOLLOW)
    .union(OFlags::RDONLY)
    .union(OFlags::CLOEXEC);

/// The earlier export, opened: handles of the directories on the current path, like the
/// writer's own.
pub(super) struct Prior {
    reuse: Reuse,
    root: Option<OwnedFd>,
    /// The directories of the current path below the root, as (name, handle or none when the
    /// earlier export has no such directory).
    open: Vec<(String, Option<OwnedFd>)>,
}

impl Prior {
    pub(super) fn new(reuse: &Reuse) -> Self {
        let root = rustix::fs::openat(rustix::fs::CWD, &reuse.dir, DIR_FLAGS, Mode::empty()).ok();
        Self {
            reuse: reuse.clone(),
            root,
            open: Vec::new(),
        }
    }

    /// Whether the earlier export holds `path` with this mode and blob.
    fn holds(&self, path: &str, kind: Kind, id: &gix::ObjectId) -> bool {
        let entries = &self.reuse.entries;
        entries
            .binary_search_by(|e| e.path.as_str().cmp(path))
            .is_ok_and(|i| entries[i].mode == kind.mode() && entries[i].id == *id)
    }

    /// The handle of the innermost open directory (the root when none is), if it exists.
    fn current(&self) -> Option<&OwnedFd> {
        match self.open.last() {
            Some((_, fd)) => fd.as_ref(),
            None => self.root.as_ref(),
        }
    }

    /// The handle of the earlier export's directory `dirs`, if it has one.
    fn dir(&mut self, dirs: &[&str]) -> Option<&OwnedFd> {
        let common = super::writer::keep_common(&mut self.open, dirs);
        for dir in &dirs[common..] {
            let fd = self
                .current()
                .and_then(|p| rustix::fs::openat(p, *dir, DIR_FLAGS, Mode::empty()).ok());
            self.open.push(((*dir).to_owned(), fd));
        }
        self.current()
    }

    /// Links the earlier export's copy of `entry` (directories `dirs`, file `name`) into
    /// `parent` as `name` when it is the same file as `content` with the entry's mode; returns
    /// whether it did. Nothing is left in `parent` when it did not.
    pub(super) fn link(
        &mut self,
        entry: &Entry,
        dirs: &[&str],
        name: &str,
        content: &[u8],
        parent: &OwnedFd,
    ) -> bool {
        let Kind::File { executable } = entry.kind else {
            return false;
        };
        if !self.holds(&entry.path, entry.kind, &entry.id) {
            return false;
        }
        let Some(from) = self.dir(dirs) else {
            return false;
        };
        let Ok(file) = rustix::fs::openat(
            from,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
        ) else {
            return false;
        };
        let Ok(stat) = rustix::fs::fstat(&file) else {
            return false;
        };
        let perm = if executable { 0o755 } else { 0o644 };
        if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile
            || stat.st_mode & 0o7777 != perm
            || u64::try_from(stat.st_size).ok() != Some(content.len() as u64)
        {
            return false;
        }
        // The same bytes as the blob (one more byte is asked for, to see a longer file).
        let mut held = Vec::with_capacity(content.len() + 1);
        let read = std::fs::File::from(file)
            .take(content.len() as u64 + 1)
            .read_to_end(&mut held);
        if read.is_err() || held != content {
            return false;
        }
        if rustix::fs::linkat(from, name, parent, name, AtFlags::empty()).is_err() {
            return false;
        }
        // The name may have been replaced between the check and the link: the link must be
        // the inode whose bytes were compared.
        let same = rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW)
            .is_ok_and(|linked| linked.st_dev == stat.st_dev && linked.st_ino == stat.st_ino);
        if !same {
            let _ = rustix::fs::unlinkat(parent, name, AtFlags::empty());
        }
        same
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    use std::path::Path;

    use super::super::{
        ExportLimits, ExportedTree, ItemMode, MemSource, ObjectId, TreeItem, digest_dir,
        export_checked,
    };
    use super::*;

    fn item(name: &str, mode: ItemMode, id: ObjectId) -> TreeItem {
        TreeItem {
            name: name.as_bytes().to_vec(),
            mode,
            id,
        }
    }

    /// Two revisions of a tree: `app.yaml` changes, the rest does not.
    struct Revisions {
        mem: MemSource,
        old: ObjectId,
        new: ObjectId,
    }

    fn revisions() -> Revisions {
        let mut mem = MemSource::default();
        let config = mem.add_blob("kind: ConfigMap\n");
        let script = mem.add_blob("#!/bin/sh\necho hook\n");
        let target = mem.add_blob("config.yaml");
        let old_app = mem.add_blob("kind: Deployment\nimage: v1\n");
        let new_app = mem.add_blob("kind: Deployment\nimage: v2\n");
        let tree = |mem: &mut MemSource, app| {
            let dir = mem.add_tree(vec![
                item("app.yaml", ItemMode::File, app),
                item("config.yaml", ItemMode::File, config),
                item("current.yaml", ItemMode::Link, target),
            ]);
            mem.add_tree(vec![
                item("apps", ItemMode::Tree, dir),
                item("hook.sh", ItemMode::Executable, script),
            ])
        };
        let old = tree(&mut mem, old_app);
        let new = tree(&mut mem, new_app);
        Revisions { mem, old, new }
    }

    fn export(mem: &MemSource, root: ObjectId, dest: &Path, reuse: Option<&Reuse>) -> ExportedTree {
        export_checked(
            mem,
            root,
            "c0ffee",
            dest,
            &[],
            &ExportLimits::default(),
            reuse,
        )
        .expect("exported")
    }

    fn ino(path: &Path) -> u64 {
        std::fs::symlink_metadata(path).expect("stat").ino()
    }

    #[test]
    fn unchanged_files_are_linked_and_the_result_is_that_of_a_fresh_export() {
        let r = revisions();
        let tmp = tempfile::tempdir().expect("tempdir");
        let (old_dir, new_dir, fresh_dir) = (
            tmp.path().join("old"),
            tmp.path().join("new"),
            tmp.path().join("fresh"),
        );
        let old = export(&r.mem, r.old, &old_dir, None);
        assert_eq!(old.linked, 0);
        let reuse = Reuse {
            dir: old_dir.clone(),
            entries: old.entries.into(),
        };
        let new = export(&r.mem, r.new, &new_dir, Some(&reuse));
        let fresh = export(&r.mem, r.new, &fresh_dir, None);

        // The unchanged regular files, the executable one included; the changed file and the
        // symlink are written.
        assert_eq!(new.linked, 2);
        for same in ["apps/config.yaml", "hook.sh"] {
            assert_eq!(ino(&new_dir.join(same)), ino(&old_dir.join(same)), "{same}");
        }
        assert_ne!(
            ino(&new_dir.join("apps/app.yaml")),
            ino(&old_dir.join("apps/app.yaml"))
        );
        assert_eq!(
            std::fs::read_to_string(new_dir.join("apps/app.yaml")).expect("read"),
            "kind: Deployment\nimage: v2\n"
        );
        // The earlier export is untouched.
        assert_eq!(
            std::fs::read_to_string(old_dir.join("apps/app.yaml")).expect("read"),
            "kind: Deployment\nimage: v1\n"
        );
        assert_eq!(new.tree_digest, fresh.tree_digest);
        assert_eq!(new.entries, fresh.entries);
        assert_eq!(digest_dir(&new_dir).expect("digest"), new.tree_digest);
    }

    #[test]
    fn an_earlier_file_that_is_not_what_its_blob_says_is_never_linked() {
        let r = revisions();
        let tmp = tempfile::tempdir().expect("tempdir");
        let old_dir = tmp.path().join("old");
        let old = export(&r.mem, r.old, &old_dir, None);
        let reuse = Reuse {
            dir: old_dir.clone(),
            entries: old.entries.into(),
        };
        // The earlier files changed on disk since they were exported: other bytes of the same
        // length; a symlink (to a file holding the right bytes) in place of a file; and the
        // directory replaced by a symlink to a copy of it.
        std::fs::write(old_dir.join("hook.sh"), "#!/bin/sh\necho pwnd\n").expect("write");
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside).expect("mkdir");
        std::fs::write(outside.join("config.yaml"), "kind: ConfigMap\n").expect("write");
        std::fs::rename(old_dir.join("apps"), tmp.path().join("moved")).expect("rename");
        std::os::unix::fs::symlink(&outside, old_dir.join("apps")).expect("symlink");
        let new_dir = tmp.path().join("new");
        let new = export(&r.mem, r.new, &new_dir, Some(&reuse));
        assert_eq!(new.linked, 0);
        assert_eq!(
            std::fs::read_to_string(new_dir.join("hook.sh")).expect("read"),
            "#!/bin/sh\necho hook\n"
        );
        assert_ne!(
            ino(&new_dir.join("apps/config.yaml")),
            ino(&outside.join("config.yaml"))
        );
        assert_eq!(digest_dir(&new_dir).expect("digest"), new.tree_digest);

        // A file linked in place of the regular one, and one whose mode changed.
        std::fs::remove_file(old_dir.join("apps")).expect("unlink");
        std::fs::rename(tmp.path().join("moved"), old_dir.join("apps")).expect("rename");
        std::fs::remove_file(old_dir.join("apps/config.yaml")).expect("unlink");
        std::os::unix::fs::symlink(
            outside.join("config.yaml"),
            old_dir.join("apps/config.yaml"),
        )
        .expect("symlink");
        std::fs::write(old_dir.join("hook.sh"), "#!/bin/sh\necho hook\n").expect("write");
        std::fs::set_permissions(
            old_dir.join("hook.sh"),
            std::fs::Permissions::from_mode(0o777),
        )
        .expect("chmod");
        let again = tmp.path().join("again");
        let new = export(&r.mem, r.new, &again, Some(&reuse));
        assert_eq!(new.linked, 0);
        let meta = std::fs::symlink_metadata(again.join("apps/config.yaml")).expect("stat");
        assert!(meta.is_file());
        assert_eq!(
            std::fs::metadata(again.join("hook.sh"))
                .expect("stat")
                .mode()
                & 0o777,
            0o755
        );
        assert_eq!(digest_dir(&again).expect("digest"), new.tree_digest);
    }

    #[test]
    fn a_missing_earlier_export_writes_everything() {
        let r = revisions();
        let tmp = tempfile::tempdir().expect("tempdir");
        let old = export(&r.mem, r.old, &tmp.path().join("old"), None);
        let reuse = Reuse {
            dir: tmp.path().join("gone"),
            entries: old.entries.into(),
        };
        let new = export(&r.mem, r.new, &tmp.path().join("new"), Some(&reuse));
        assert_eq!(new.linked, 0);
        assert_eq!(new.files, 4);
    }
}
