//! Bare repositories and the local clones that fill them.

use std::fs;
use std::path::{Component, Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use anyhow::{Context as _, ensure};
use tempfile::TempDir;

use super::Signing;
use super::cmd::{create_dir, isolated_git, run, run_stdout, run_with_stdin};

/// The branch a new repository starts on.
const DEFAULT_BRANCH: &str = "main";

/// `HOME` for git commands that need no configuration at all: a path that does not exist.
const NO_HOME: &str = "/nonexistent/plumb-testsupport-home";

/// A name and email used as commit author or committer (and tagger).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// Display name, e.g. `Plumb Author`.
    pub name: String,
    /// Email address, e.g. `author@plumb.test`.
    pub email: String,
}

impl Identity {
    /// An identity with this name and email.
    pub fn new(name: impl Into<String>, email: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            email: email.into(),
        }
    }
}

/// A bare repository: on [`GitServers`](super::GitServers) (reachable over https, ssh and
/// `file://`) or local-only ([`Repo::local`], `file://` only). Its default branch is `main`.
///
/// A server repository lives in the servers' directory and is gone once they are dropped;
/// a local-only one lives until its last clone is dropped.
#[derive(Clone, Debug)]
pub struct Repo {
    name: String,
    path: PathBuf,
    https_url: Option<String>,
    ssh_url: Option<String>,
    _owner: Option<Arc<TempDir>>,
}

impl Repo {
    /// Creates the bare repository `path` (which must not exist yet) with pushes over https
    /// allowed.
    pub(crate) fn init_bare(
        name: &str,
        path: PathBuf,
        https_url: Option<String>,
        ssh_url: Option<String>,
        owner: Option<Arc<TempDir>>,
    ) -> anyhow::Result<Self> {
        ensure!(
            !path.exists(),
            "repository {name} already exists at {}",
            path.display()
        );
        run(isolated_git(Path::new(NO_HOME))
            .args([
                "init",
                "--quiet",
                "--bare",
                "--initial-branch",
                DEFAULT_BRANCH,
            ])
            .arg(&path))
        .with_context(|| format!("cannot create the bare repository {name}"))?;
        run(isolated_git(Path::new(NO_HOME)).arg("-C").arg(&path).args([
            "config",
            "http.receivepack",
            "true",
        ]))?;
        Ok(Self {
            name: name.to_owned(),
            path,
            https_url,
            ssh_url,
            _owner: owner,
        })
    }

    /// Creates a bare repository in a temporary directory of its own, reachable only through
    /// [`Repo::path`] or [`Repo::file_url`].
    pub fn local(name: &str) -> anyhow::Result<Self> {
        check_repo_name(name)?;
        let dir = tempfile::Builder::new()
            .prefix("plumb-repo-")
            .tempdir()
            .context("cannot create a temporary directory for a local repository")?;
        let path = dir.path().join(format!("{name}.git"));
        Self::init_bare(name, path, None, None, Some(Arc::new(dir)))
    }

    /// The name given at creation, without `.git`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The absolute path of the bare repository (`<root>/<name>.git`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `file:///abs/path/<name>.git`.
    pub fn file_url(&self) -> String {
        format!("file://{}", self.path.display())
    }

    /// `https://127.0.0.1:PORT/<name>.git` (without credentials), or `None` for a local repo.
    pub fn https_url(&self) -> Option<&str> {
        self.https_url.as_deref()
    }

    /// `ssh://USER@127.0.0.1:PORT/abs/path/<name>.git`, or `None` for a local repo.
    pub fn ssh_url(&self) -> Option<&str> {
        self.ssh_url.as_deref()
    }

    /// Resolves `rev` (a branch, tag or any revision) in the bare repository to an object id.
    pub fn rev_parse(&self, rev: &str) -> anyhow::Result<String> {
        run_stdout(
            isolated_git(Path::new(NO_HOME))
                .arg("-C")
                .arg(&self.path)
                .args(["rev-parse", "--verify", "--end-of-options", rev]),
        )
        .with_context(|| format!("cannot resolve {rev} in repository {}", self.name))
    }

    /// Clones the repository (through the file system) into a new temporary work tree whose
    /// `origin` is this repository. An empty repository gives a work tree on `main`.
    pub fn work_tree(&self) -> anyhow::Result<WorkTree> {
        WorkTree::clone_from(self)
    }
}

/// Rejects names that would leave the repositories' directory or need quoting in URLs.
pub(crate) fn check_repo_name(name: &str) -> anyhow::Result<()> {
    ensure!(
        !name.is_empty()
            && !name.starts_with(['.', '-'])
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)),
        "invalid repository name {name:?}: use ASCII letters, digits, '-', '_' and '.', \
         not starting with '.' or '-'"
    );
    Ok(())
}

/// A non-bare clone of a [`Repo`] in a temporary directory, with its own empty `HOME` so no
/// configuration of the machine leaks in.
///
/// Commits carry the [`Identity`] set with [`WorkTree::set_author`] and
/// [`WorkTree::set_committer`] (default `Plumb Author <author@plumb.test>` and
/// `Plumb Committer <committer@plumb.test>`); the committer also tags.
#[derive(Debug)]
pub struct WorkTree {
    _dir: TempDir,
    path: PathBuf,
    home: PathBuf,
    branch: String,
    author: Identity,
    committer: Identity,
}

impl WorkTree {
    fn clone_from(repo: &Repo) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("plumb-worktree-")
            .tempdir()
            .context("cannot create a temporary directory for a work tree")?;
        let home = dir.path().join("home");
        create_dir(&home)?;
        let path = dir.path().join("work");
        run(isolated_git(&home)
            .args(["clone", "--quiet"])
            .arg(repo.path())
            .arg(&path))
        .with_context(|| format!("cannot clone repository {}", repo.name))?;
        let mut tree = Self {
            _dir: dir,
            path,
            home,
            branch: String::new(),
            author: Identity::new("Plumb Author", "author@plumb.test"),
            committer: Identity::new("Plumb Committer", "committer@plumb.test"),
        };
        let has_head = tree
            .git()
            .args(["rev-parse", "--quiet", "--verify", "HEAD"])
            .output()
            .context("cannot run git")?
            .status
            .success();
        if !has_head {
            run(tree.git().args([
                "symbolic-ref",
                "HEAD",
                &format!("refs/heads/{DEFAULT_BRANCH}"),
            ]))?;
        }
        tree.branch = run_stdout(tree.git().args(["symbolic-ref", "--short", "HEAD"]))?;
        Ok(tree)
    }

    /// The root of the work tree.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The checked-out branch, which [`WorkTree::push`] pushes.
    pub fn branch(&self) -> &str {
        &self.branch
    }

    /// Sets the author of the next commits.
    pub fn set_author(&mut self, author: Identity) {
        self.author = author;
    }

    /// Sets the committer (and tagger) of the next commits and tags.
    pub fn set_committer(&mut self, committer: Identity) {
        self.committer = committer;
    }

    /// A `git` command run in the work tree with the isolated environment and identities.
    pub fn git(&self) -> Command {
        let mut cmd = isolated_git(&self.home);
        cmd.current_dir(&self.path)
            .env("GIT_AUTHOR_NAME", &self.author.name)
            .env("GIT_AUTHOR_EMAIL", &self.author.email)
            .env("GIT_COMMITTER_NAME", &self.committer.name)
            .env("GIT_COMMITTER_EMAIL", &self.committer.email);
        cmd
    }

    /// Switches to branch `name`, creating it at the current commit (or resetting it there).
    pub fn switch_branch(&mut self, name: &str) -> anyhow::Result<()> {
        run(self.git().args(["checkout", "--quiet", "-B", name]))?;
        self.branch = name.to_owned();
        Ok(())
    }

    /// Writes `content` to the relative `path`, creating parent directories.
    pub fn write(&self, path: impl AsRef<Path>, content: impl AsRef<[u8]>) -> anyhow::Result<()> {
        let full = self.inside(path.as_ref())?;
        if let Some(parent) = full.parent() {
            create_dir(parent)?;
        }
        fs::write(&full, content).with_context(|| format!("cannot write {}", full.display()))
    }

    /// Removes the relative `path`: a file, a symlink or a whole directory.
    pub fn remove(&self, path: impl AsRef<Path>) -> anyhow::Result<()> {
        let full = self.inside(path.as_ref())?;
        let meta = fs::symlink_metadata(&full)
            .with_context(|| format!("cannot remove {}", full.display()))?;
        if meta.is_dir() {
            fs::remove_dir_all(&full)
        } else {
            fs::remove_file(&full)
        }
        .with_context(|| format!("cannot remove {}", full.display()))
    }

    /// Creates a symlink at the relative `path` pointing to `target`, which is stored as given
    /// (it may be absolute or lead outside the work tree: tests of path safety need that).
    pub fn symlink(&self, path: impl AsRef<Path>, target: impl AsRef<Path>) -> anyhow::Result<()> {
        let full = self.inside(path.as_ref())?;
        if let Some(parent) = full.parent() {
            create_dir(parent)?;
        }
        std::os::unix::fs::symlink(target.as_ref(), &full)
            .with_context(|| format!("cannot create the symlink {}", full.display()))
    }

    /// Stages every change (including removals) and commits it, signed as `signing` says;
    /// returns the new commit id. A commit without changes is allowed.
    pub fn commit(&self, message: &str, signing: &Signing) -> anyhow::Result<String> {
        run(self.git().args(["add", "--all"]))?;
        let mut commit = self.signing_git(signing);
        commit.args([
            "commit",
            "--quiet",
            "--allow-empty",
            "--no-verify",
            "-m",
            message,
        ]);
        if signing.is_signed() {
            commit.arg("--gpg-sign");
        }
        run(&mut commit).context("cannot commit")?;
        self.head()
    }

    /// Creates the annotated tag `name` (message = name) at `HEAD`, signed as `signing` says;
    /// returns the tag object id. [`WorkTree::push`] pushes it.
    pub fn tag(&self, name: &str, signing: &Signing) -> anyhow::Result<String> {
        let mut tag = self.signing_git(signing);
        tag.args(["tag", "--annotate", "-m", name]);
        if signing.is_signed() {
            tag.arg("--sign");
        }
        tag.args(["--", name]);
        run(&mut tag).with_context(|| format!("cannot create tag {name}"))?;
        run_stdout(
            self.git()
                .args(["rev-parse", "--verify", &format!("refs/tags/{name}")]),
        )
    }

    /// Stores `content` as a blob (nothing is staged); returns its id. For crafting objects
    /// that git's porcelain would never make, with [`WorkTree::make_tree`].
    pub fn write_blob(&self, content: &str) -> anyhow::Result<String> {
        run_with_stdin(self.git().args(["hash-object", "-w", "--stdin"]), content)
    }

    /// Stores a tree of exactly these entries, in this order, duplicates allowed (`git mktree
    /// --missing`); returns its id. Entries are (mode, id, name) with mode `100644`,
    /// `100755`, `120000` (symlink; the blob holds the target) or `040000` (tree).
    pub fn make_tree(&self, entries: &[(&str, &str, &str)]) -> anyhow::Result<String> {
        let mut input = String::new();
        for (mode, id, name) in entries {
            let kind = if *mode == "040000" { "tree" } else { "blob" };
            input.push_str(&format!("{mode} {kind} {id}\t{name}\n"));
        }
        run_with_stdin(self.git().args(["mktree", "--missing"]), &input)
    }

    /// The tree id of `rev` (`HEAD`, a commit id).
    pub fn tree_of(&self, rev: &str) -> anyhow::Result<String> {
        run_stdout(
            self.git()
                .args(["rev-parse", "--verify", &format!("{rev}^{{tree}}")]),
        )
    }

    /// The entries of tree `id` as (mode, id, name), for building a modified copy.
    pub fn tree_entries(&self, id: &str) -> anyhow::Result<Vec<(String, String, String)>> {
        let listing = run_stdout(self.git().args(["ls-tree", "--full-tree", id]))?;
        Ok(listing
            .lines()
            .filter_map(|line| {
                let (meta, name) = line.split_once('\t')?;
                let mut meta = meta.split(' ');
                let mode = meta.next()?.to_owned();
                let _kind = meta.next()?;
                let id = meta.next()?.to_owned();
                Some((mode, id, name.to_owned()))
            })
            .collect())
    }

    /// Commits tree `tree` on top of `HEAD` (if any), signed as `signing` says, and moves the
    /// branch there without touching the index or the files; returns the commit id. Use it
    /// for crafted trees; [`WorkTree::commit`] afterwards would commit the files' state.
    pub fn commit_tree(
        &self,
        tree: &str,
        message: &str,
        signing: &Signing,
    ) -> anyhow::Result<String> {
        let mut commit = self.signing_git(signing);
        commit.args(["commit-tree", tree, "-m", message]);
        if let Ok(head) = self.head() {
            commit.args(["-p", &head]);
        }
        if signing.is_signed() {
            commit.arg("-S");
        }
        let id = run_stdout(&mut commit).context("cannot commit the tree")?;
        run(self.git().args(["update-ref", "HEAD", &id]))?;
        Ok(id)
    }

    /// Pushes the current branch and all tags to `origin`.
    pub fn push(&self) -> anyhow::Result<()> {
        self.push_with(false)
    }

    /// Pushes like [`WorkTree::push`] but overwrites whatever the remote has (history rewrites,
    /// moved tags).
    pub fn push_force(&self) -> anyhow::Result<()> {
        self.push_with(true)
    }

    /// The id of the commit checked out.
    pub fn head(&self) -> anyhow::Result<String> {
        run_stdout(self.git().args(["rev-parse", "--verify", "HEAD"]))
    }

    fn push_with(&self, force: bool) -> anyhow::Result<()> {
        let mut push = self.git();
        push.args(["push", "--quiet", "--tags"]);
        if force {
            push.arg("--force");
        }
        push.arg("origin")
            .arg(format!("HEAD:refs/heads/{}", self.branch));
        run(&mut push).with_context(|| format!("cannot push branch {}", self.branch))?;
        Ok(())
    }

    fn signing_git(&self, signing: &Signing) -> Command {
        let mut cmd = self.git();
        for setting in signing.git_config() {
            cmd.arg("-c").arg(setting);
        }
        cmd.envs(signing.envs());
        cmd
    }

    /// `self.path / relative`, refusing absolute paths and `..`.
    fn inside(&self, relative: &Path) -> anyhow::Result<PathBuf> {
        ensure!(
            !relative.as_os_str().is_empty()
                && relative
                    .components()
                    .all(|c| matches!(c, Component::Normal(_) | Component::CurDir)),
            "{} is not a relative path inside the work tree",
            relative.display()
        );
        Ok(self.path.join(relative))
    }
}
