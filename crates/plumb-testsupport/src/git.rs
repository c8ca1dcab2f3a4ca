//! Real Git servers, repositories and signed commits for tests.
//!
//! [`GitServers::start`] runs, on free `127.0.0.1` ports inside a fresh temporary directory,
//! smart HTTP over TLS with basic auth (nginx + fcgiwrap + `git http-backend`) and OpenSSH
//! (public-key auth only). Both serve the same directory of bare repositories, so a repository
//! made with [`GitServers::create_repo`] is reachable over `https://`, `ssh://` and `file://`.
//!
//! [`Repo`] is a bare repository (on the servers, or local-only via [`Repo::local`]) and
//! [`WorkTree`] a clone of it that writes files, commits (optionally signed, see [`Signing`]),
//! tags and pushes.
//!
//! Everything runs real programs (`git`, `nginx`, `fcgiwrap`, `sshd`, `ssh-keygen`, `openssl`,
//! `gpg`) found at their Debian paths or on `PATH`; nothing is mocked.

pub(crate) mod cmd;
mod repo;
pub(crate) mod server;
mod signing;

pub use repo::{Identity, Repo, WorkTree};
pub use server::{GitServers, PIDS_DIR_ENV, ServerOptions};
pub use signing::{GpgSigner, KeyType, Signing, SshSigner};
