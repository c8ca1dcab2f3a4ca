//! Reading a chart archive (`.tgz`) safely, then writing it like a Git export.
//!
//! The archive is read into memory entry by entry (never with `tar`'s own unpacking, which
//! writes where the archive says), within the caps, and refused whole when any entry is:
//! an absolute path, a path with `..`, outside the archive's single top directory, a
//! symlink, a hard link, a device or FIFO, any other special type, a name that is not UTF-8,
//! a path given twice, a file over the size cap, or beyond the file-count, total-size or
//! depth caps (the total decompressed stream is capped too: a gzip bomb stops at the cap).
//! The top directory is stripped, and the tree is written by the export writer
//! ([`crate::export::export_from`]): the same name checks (`.git` in any spelling,
//! duplicates after case folding), directory handles only, and the same tree digest.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use crate::export::{ExportedTree, ItemMode, MemSource, ObjectId, TreeItem};

use super::{ChartLimits, Error, Result};

/// A directory of an archive, in memory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dir {
    /// Name -> entry.
    pub entries: BTreeMap<String, Node>,
}

/// A file or directory of an archive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    /// A directory.
    Dir(Dir),
    /// A regular file.
    File {
        /// Its content.
        data: Vec<u8>,
        /// Whether the owner may execute it.
        executable: bool,
    },
}

impl Dir {
    /// The file at `path` (`/`-separated), if any.
    pub fn file(&self, path: &str) -> Option<&[u8]> {
        let mut dir = self;
        let mut parts = path.split('/').peekable();
        while let Some(part) = parts.next() {
            match dir.entries.get(part)? {
                Node::Dir(d) if parts.peek().is_some() => dir = d,
                Node::File { data, .. } if parts.peek().is_none() => return Some(data),
                _ => return None,
            }
        }
        None
    }

    /// The directory at `path`, if any.
    pub fn dir(&self, path: &str) -> Option<&Dir> {
        let mut dir = self;
        for part in path.split('/') {
            match dir.entries.get(part)? {
                Node::Dir(d) => dir = d,
                Node::File { .. } => return None,
            }
        }
        Some(dir)
    }
}

/// Counts bytes read through it and fails past a cap (a gzip bomb stops there).
struct Capped<R> {
    inner: R,
    left: u64,
    exceeded: bool,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.left {
            self.exceeded = true;
            return Err(std::io::Error::other("decompressed size cap exceeded"));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Reads the gzip-compressed tar `archive` (`label` names it in errors) into memory with the
/// archive's top directory stripped. Blocking.
pub fn read_archive(archive: &[u8], label: &str, limits: &ChartLimits) -> Result<Dir> {
    let caps = limits.unpacked;
    let refuse = |path: &str, reason: String| Error::Archive {
        archive: label.to_owned(),
        path: path.to_owned(),
        reason,
    };
    // Headers and padding are at most 1.5 KiB per entry on top of the contents.
    let stream_cap = caps
        .max_total_size
        .saturating_add((caps.max_files as u64 + 16).saturating_mul(1536));
    let mut capped = Capped {
        inner: flate2::read::GzDecoder::new(archive),
        left: stream_cap,
        exceeded: false,
    };
    let mut root = Dir::default();
    let mut top: Option<String> = None;
    let mut files = 0usize;
    let mut total = 0u64;
    let result: Result<()> = (|| {
        let mut tar = tar::Archive::new(&mut capped);
        let entries = tar
            .entries()
            .map_err(|e| refuse("", format!("not a gzip-compressed tar archive: {e}")))?;
        for entry in entries {
            let mut entry = entry
                .map_err(|e| refuse("", format!("not a valid gzip-compressed tar archive: {e}")))?;
            let raw = entry.path_bytes().into_owned();
            let path = String::from_utf8(raw).map_err(|e| {
                refuse(
                    &String::from_utf8_lossy(e.as_bytes()),
                    "the name is not UTF-8".into(),
                )
            })?;
            let kind = entry.header().entry_type();
            use tar::EntryType as T;
            let is_dir = match kind {
                T::Regular | T::Continuous => false,
                T::Directory => true,
                // Extended headers apply to the entry after them (the reader applies them).
                T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink => continue,
                T::Symlink => {
                    return Err(refuse(
                        &path,
                        "is a symbolic link; charts may not hold links".into(),
                    ));
                }
                T::Link => {
                    return Err(refuse(
                        &path,
                        "is a hard link; charts may not hold links".into(),
                    ));
                }
                T::Char | T::Block | T::Fifo => {
                    return Err(refuse(&path, "is a device or FIFO".into()));
                }
                other => {
                    return Err(refuse(
                        &path,
                        format!(
                            "has the unsupported entry type {:?}",
                            other.as_byte() as char
                        ),
                    ));
                }
            };
            if path.starts_with('/') {
                return Err(refuse(&path, "is an absolute path".into()));
            }
            let mut parts: Vec<&str> = Vec::new();
            for part in path.split('/') {
                match part {
                    "" | "." => continue,
                    ".." => return Err(refuse(&path, "leaves the chart (..)".into())),
                    p if p.contains('\\') || p.contains('\0') => {
                        return Err(refuse(&path, "holds a backslash or NUL".into()));
                    }
                    p => parts.push(p),
                }
            }
            let Some((first, rest)) = parts.split_first() else {
                continue;
            };
            match &top {
                None => top = Some((*first).to_owned()),
                Some(t) if t == first => {}
                Some(t) => {
                    return Err(refuse(
                        &path,
                        format!("is outside the archive's top directory {t:?}"),
                    ));
                }
            }
            if rest.is_empty() {
                if !is_dir {
                    return Err(refuse(
                        &path,
                        "is a file where the chart's top directory belongs".into(),
                    ));
                }
                continue;
            }
            if rest.len() > caps.max_depth {
                return Err(refuse(
                    &path,
                    format!("is nested deeper than {} directories", caps.max_depth),
                ));
            }
            let node = if is_dir {
                Node::Dir(Dir::default())
            } else {
                files += 1;
                if files > caps.max_files {
                    return Err(refuse(
                        &path,
                        format!("is beyond the limit of {} files", caps.max_files),
                    ));
                }
                let size = entry
                    .header()
                    .size()
                    .map_err(|e| refuse(&path, e.to_string()))?;
                if size > caps.max_file_size {
                    return Err(refuse(
                        &path,
                        format!(
                            "is larger than the limit of {} bytes per file ({size})",
                            caps.max_file_size
                        ),
                    ));
                }
                total += size;
                if total > caps.max_total_size {
                    return Err(refuse(
                        &path,
                        format!(
                            "makes the chart larger than the limit of {} bytes",
                            caps.max_total_size
                        ),
                    ));
                }
                let mut data = Vec::with_capacity(size as usize);
                (&mut entry)
                    .take(size)
                    .read_to_end(&mut data)
                    .map_err(|e| refuse(&path, format!("cannot be read: {e}")))?;
                let mode = entry.header().mode().unwrap_or(0o644);
                Node::File {
                    data,
                    executable: mode & 0o100 != 0,
                }
            };
            insert(&mut root, rest, node).map_err(|reason| refuse(&path, reason))?;
        }
        Ok(())
    })();
    if capped.exceeded {
        return Err(refuse(
            "",
            format!("decompresses to more than {stream_cap} bytes"),
        ));
    }
    result?;
    if top.is_none() {
        return Err(refuse("", "the archive is empty".into()));
    }
    Ok(root)
}

/// Puts `node` at `path` below `root`, creating directories; a path given twice is refused
/// (a directory entry after the files in it is fine).
fn insert(root: &mut Dir, path: &[&str], node: Node) -> std::result::Result<(), String> {
    let (last, parents) = path.split_last().expect("a non-empty path");
    let mut dir = root;
    for part in parents {
        let next = dir
            .entries
            .entry((*part).to_owned())
            .or_insert_with(|| Node::Dir(Dir::default()));
        dir = match next {
            Node::Dir(d) => d,
            Node::File { .. } => return Err(format!("{part:?} is a file and a directory")),
        };
    }
    match (dir.entries.get(*last), &node) {
        (None, _) => {
            dir.entries.insert((*last).to_owned(), node);
            Ok(())
        }
        (Some(Node::Dir(_)), Node::Dir(_)) => Ok(()),
        _ => Err("appears twice in the archive".into()),
    }
}

/// Refuses a chart whose `Chart.yaml` is missing or names another chart than `expected`.
pub fn check_chart_name(root: &Dir, expected: &str, label: &str) -> Result<()> {
    let refuse = |reason: String| Error::Archive {
        archive: label.to_owned(),
        path: "Chart.yaml".into(),
        reason,
    };
    let text = root
        .file("Chart.yaml")
        .ok_or_else(|| refuse("is missing: this is not a Helm chart".into()))?;
    let meta: serde_json::Value =
        serde_saphyr::from_slice(text).map_err(|e| refuse(format!("does not parse: {e}")))?;
    let name = meta
        .get("name")
        .and_then(|n| n.as_str())
        .unwrap_or_default();
    if name != expected {
        return Err(refuse(format!(
            "names the chart {name:?}, not {expected:?}"
        )));
    }
    Ok(())
}

/// Reads the chart directory `path` (a Git export: `label` names it in errors) into memory
/// within `limits.unpacked`, refusing what an archive may not hold either: a symlink, a
/// special file, a name that is not UTF-8. Blocking.
pub fn read_dir(path: &Path, label: &str, limits: &ChartLimits) -> Result<Dir> {
    let caps = limits.unpacked;
    let refuse = |rel: &str, reason: String| Error::Archive {
        archive: label.to_owned(),
        path: rel.to_owned(),
        reason,
    };
    let mut files = 0usize;
    let mut total = 0u64;
    fn walk(
        dir: &Path,
        rel: &str,
        depth: usize,
        caps: &crate::export::ExportLimits,
        files: &mut usize,
        total: &mut u64,
        refuse: &dyn Fn(&str, String) -> Error,
    ) -> Result<Dir> {
        if depth > caps.max_depth {
            return Err(refuse(
                rel,
                format!("is nested deeper than {} directories", caps.max_depth),
            ));
        }
        let io = |rel: &str, e: std::io::Error| refuse(rel, format!("cannot be read: {e}"));
        let mut out = Dir::default();
        for entry in std::fs::read_dir(dir).map_err(|e| io(rel, e))? {
            let entry = entry.map_err(|e| io(rel, e))?;
            let name = entry.file_name().into_string().map_err(|n| {
                refuse(
                    &format!("{rel}/{}", n.to_string_lossy()),
                    "the name is not UTF-8".into(),
                )
            })?;
            let child = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            let meta = std::fs::symlink_metadata(entry.path()).map_err(|e| io(&child, e))?;
            let node = if meta.file_type().is_symlink() {
                return Err(refuse(&child, "is a symlink".into()));
            } else if meta.is_dir() {
                Node::Dir(walk(
                    &entry.path(),
                    &child,
                    depth + 1,
                    caps,
                    files,
                    total,
                    refuse,
                )?)
            } else if meta.is_file() {
                *files += 1;
                if *files > caps.max_files {
                    return Err(refuse(
                        &child,
                        format!("is beyond the limit of {} files", caps.max_files),
                    ));
                }
                if meta.len() > caps.max_file_size {
                    return Err(refuse(
                        &child,
                        format!("is larger than the limit of {} bytes", caps.max_file_size),
                    ));
                }
                *total += meta.len();
                if *total > caps.max_total_size {
                    return Err(refuse(
                        &child,
                        format!(
                            "is beyond the limit of {} bytes in total",
                            caps.max_total_size
                        ),
                    ));
                }
                use std::os::unix::fs::PermissionsExt;
                let data = std::fs::read(entry.path()).map_err(|e| io(&child, e))?;
                if data.len() as u64 > caps.max_file_size {
                    return Err(refuse(&child, "changed while it was read".into()));
                }
                Node::File {
                    data,
                    executable: meta.permissions().mode() & 0o100 != 0,
                }
            } else {
                return Err(refuse(&child, "is not a regular file or directory".into()));
            };
            out.entries.insert(name, node);
        }
        Ok(out)
    }
    walk(path, "", 0, &caps, &mut files, &mut total, &refuse)
}

/// Writes `root` into `dest` through the export writer (every check of a Git export, within
/// `limits.unpacked`). Blocking.
pub fn write(root: &Dir, label: &str, dest: &Path, limits: &ChartLimits) -> Result<ExportedTree> {
    let mut mem = MemSource::default();
    let id = add(&mut mem, root);
    Ok(crate::export::export_from(
        &mem,
        id,
        label,
        dest,
        &[],
        &limits.unpacked,
    )?)
}

fn add(mem: &mut MemSource, dir: &Dir) -> ObjectId {
    let mut items = Vec::new();
    for (name, node) in &dir.entries {
        let (mode, id) = match node {
            Node::Dir(d) => (ItemMode::Tree, add(mem, d)),
            Node::File { data, executable } => (
                if *executable {
                    ItemMode::Executable
                } else {
                    ItemMode::File
                },
                mem.add_blob(data.clone()),
            ),
        };
        items.push(TreeItem {
            name: name.as_bytes().to_vec(),
            mode,
            id,
        });
    }
    mem.add_tree(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A gzip-compressed tar of `entries`: (path, type, content, link target).
    fn archive(entries: &[(&str, tar::EntryType, &[u8], Option<&str>)]) -> Vec<u8> {
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut tar = tar::Builder::new(gz);
        for (path, kind, data, link) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(*kind);
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            // Bypass the builder's path checks: hostile archives are what is tested.
            let name = &mut header.as_old_mut().name;
            name[..path.len()].copy_from_slice(path.as_bytes());
            if let Some(link) = link {
                header.set_link_name(link).expect("link name");
            }
            header.set_cksum();
            tar.append(&header, *data).expect("append");
        }
        tar.into_inner().expect("tar").finish().expect("gzip")
    }

    const CHART: &[u8] = b"apiVersion: v2\nname: app\nversion: 1.0.0\n";

    #[test]
    fn a_chart_directory_reads_whole_and_refuses_links_and_what_exceeds_the_caps() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("app");
        std::fs::create_dir_all(dir.join("templates")).expect("dirs");
        std::fs::write(dir.join("Chart.yaml"), CHART).expect("chart");
        std::fs::write(dir.join("templates/cm.yaml"), "kind: ConfigMap\n").expect("file");
        let limits = ChartLimits::default();
        let tree = read_dir(&dir, "app in Git", &limits).expect("read");
        assert_eq!(tree.file("Chart.yaml"), Some(CHART));
        assert_eq!(
            tree.file("templates/cm.yaml"),
            Some(&b"kind: ConfigMap\n"[..])
        );
        let mut few = limits;
        few.unpacked.max_files = 1;
        let err = read_dir(&dir, "app in Git", &few).expect_err("two files");
        assert!(err.to_string().contains("limit of 1 files"), "{err}");
        std::os::unix::fs::symlink("/etc/passwd", dir.join("templates/p.yaml")).expect("link");
        let err = read_dir(&dir, "app in Git", &limits).expect_err("a symlink");
        let text = err.to_string();
        assert!(
            text.contains("app in Git")
                && text.contains("templates/p.yaml")
                && text.contains("symlink"),
            "{text}"
        );
    }

    #[test]
    fn a_chart_reads_with_its_top_directory_stripped() {
        let bytes = archive(&[
            ("app/Chart.yaml", tar::EntryType::Regular, CHART, None),
            ("app/templates/", tar::EntryType::Directory, b"", None),
            (
                "app/templates/cm.yaml",
                tar::EntryType::Regular,
                b"kind: ConfigMap\n",
                None,
            ),
        ]);
        let root = read_archive(&bytes, "app 1.0.0", &ChartLimits::default()).expect("reads");
        assert_eq!(root.file("Chart.yaml"), Some(CHART));
        assert_eq!(
            root.file("templates/cm.yaml"),
            Some(&b"kind: ConfigMap\n"[..])
        );
        check_chart_name(&root, "app", "app 1.0.0").expect("named app");
        let err = check_chart_name(&root, "other", "app 1.0.0").expect_err("not other");
        assert!(err.to_string().contains("not \"other\""), "{err}");
        let dest = tempfile::tempdir().expect("tempdir");
        let out = dest.path().join("chart");
        let written = write(&root, "app 1.0.0", &out, &ChartLimits::default()).expect("written");
        assert_eq!(
            written.tree_digest,
            crate::export::digest_dir(&out).expect("digest")
        );
        assert!(out.join("templates/cm.yaml").is_file());
    }

    #[test]
    fn hostile_archives_are_refused_naming_the_entry() {
        use tar::EntryType as T;
        let cases: Vec<(Vec<u8>, &str, &str)> = vec![
            (
                archive(&[("app/../../etc/passwd", T::Regular, b"x", None)]),
                "app/../../etc/passwd",
                "leaves the chart",
            ),
            (
                archive(&[("/etc/passwd", T::Regular, b"x", None)]),
                "/etc/passwd",
                "absolute",
            ),
            (
                archive(&[
                    ("app/Chart.yaml", T::Regular, CHART, None),
                    ("app/link", T::Symlink, b"", Some("/etc")),
                ]),
                "app/link",
                "symbolic link",
            ),
            (
                archive(&[
                    ("app/Chart.yaml", T::Regular, CHART, None),
                    ("app/hard", T::Link, b"", Some("app/Chart.yaml")),
                ]),
                "app/hard",
                "hard link",
            ),
            (
                archive(&[("app/dev", T::Char, b"", None)]),
                "app/dev",
                "device",
            ),
            (
                archive(&[
                    ("app/Chart.yaml", T::Regular, CHART, None),
                    ("other/x", T::Regular, b"x", None),
                ]),
                "other/x",
                "outside the archive's top directory",
            ),
            (
                archive(&[
                    ("app/a", T::Regular, b"x", None),
                    ("app/a", T::Regular, b"y", None),
                ]),
                "app/a",
                "appears twice",
            ),
        ];
        for (bytes, path, reason) in cases {
            let err = read_archive(&bytes, "app 1.0.0", &ChartLimits::default())
                .expect_err(path)
                .to_string();
            assert!(err.contains(path) && err.contains(reason), "{path}: {err}");
            assert!(err.contains("app 1.0.0"), "{err}");
        }
    }

    #[test]
    fn size_caps_hold_also_for_a_gzip_bomb() {
        let mut limits = ChartLimits::default();
        limits.unpacked.max_file_size = 1024;
        let big = vec![b'a'; 4096];
        let bytes = archive(&[("app/big", tar::EntryType::Regular, &big, None)]);
        let err = read_archive(&bytes, "app", &limits)
            .expect_err("too big")
            .to_string();
        assert!(err.contains("larger than the limit of 1024 bytes"), "{err}");

        // Many small files: the total cap.
        let mut limits = ChartLimits::default();
        limits.unpacked.max_total_size = 10_000;
        let entries: Vec<(String, Vec<u8>)> = (0..20)
            .map(|i| (format!("app/f{i}"), vec![b'a'; 1000]))
            .collect();
        let refs: Vec<(&str, tar::EntryType, &[u8], Option<&str>)> = entries
            .iter()
            .map(|(p, d)| (p.as_str(), tar::EntryType::Regular, d.as_slice(), None))
            .collect();
        let err = read_archive(&archive(&refs), "app", &limits)
            .expect_err("total")
            .to_string();
        assert!(
            err.contains("larger than the limit of 10000 bytes"),
            "{err}"
        );

        // Entries that carry no content (directories) still cost headers: a stream of them
        // that inflates far beyond the caps stops at the stream cap.
        let mut limits = ChartLimits::default();
        limits.unpacked.max_total_size = 1024;
        limits.unpacked.max_files = 1;
        let names: Vec<String> = (0..20_000).map(|i| format!("app/d{i}/")).collect();
        let dirs: Vec<(&str, tar::EntryType, &[u8], Option<&str>)> = names
            .iter()
            .map(|p| (p.as_str(), tar::EntryType::Directory, &b""[..], None))
            .collect();
        let bomb = archive(&dirs);
        assert!(bomb.len() < 1024 * 1024);
        let err = read_archive(&bomb, "app", &limits)
            .expect_err("bomb")
            .to_string();
        assert!(err.contains("decompresses to more than"), "{err}");
    }
}
