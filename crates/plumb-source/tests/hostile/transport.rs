//! Credentials never follow a redirect to another host, and plain http needs an opt-in
//! and carries none.

use plumb_source::{Fetcher, GitRef, SourceRequest};
use plumb_testsupport::git::Signing;

use crate::TestResult;

/// Counts connections to a port that nothing should reach.
struct Tripwire {
    port: u16,
    hits: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Tripwire {
    fn start() -> anyhow::Result<Self> {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = {
            let (hits, stop) = (hits.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok(_) => {
                            hits.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(_) => std::thread::sleep(std::time::Duration::from_millis(5)),
                    }
                }
            })
        };
        Ok(Self {
            port,
            hits,
            stop,
            thread: Some(thread),
        })
    }

    /// Connections seen, after one last look at the listener.
    fn hits(mut self) -> usize {
        std::thread::sleep(std::time::Duration::from_millis(20));
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.hits.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_never_follow_a_redirect_to_another_host() -> TestResult {
    let servers = plumb_testsupport::git::GitServers::start()?;
    let repo = servers.create_repo("moved")?;
    let tree = repo.work_tree()?;
    tree.write("a", "1\n")?;
    tree.commit("one", &Signing::None)?;
    tree.push()?;
    let cache = tempfile::tempdir()?;
    let fetcher = Fetcher::new(cache.path());
    let credentials = [
        plumb_source::Credentials::Basic {
            username: servers.username().to_owned(),
            password: servers.password().to_owned().into(),
        },
        plumb_source::Credentials::Bearer {
            token: "t0ken-for-the-real-host".to_owned().into(),
        },
    ];
    for (i, credentials) in credentials.into_iter().enumerate() {
        let trap = Tripwire::start()?;
        let mut request = SourceRequest::new(
            servers.https_redirect_url("moved", trap.port),
            GitRef::Branch("main".into()),
        );
        request.options.ca_file = Some(servers.ca_cert_path().to_owned());
        request.options.credentials = credentials;
        let err = fetcher
            .fetch(&request, &cache.path().join(format!("out{i}")))
            .await
            .expect_err("redirect refused");
        assert!(!err.to_string().contains(servers.password()), "{err}");
        assert_eq!(trap.hits(), 0, "git followed the redirect to another host");
    }
    // Without credentials there is nothing to hand over, and the redirect is followed.
    let trap = Tripwire::start()?;
    let mut request = SourceRequest::new(
        servers.https_redirect_url("moved", trap.port),
        GitRef::Branch("main".into()),
    );
    request.options.ca_file = Some(servers.ca_cert_path().to_owned());
    let _ = fetcher.fetch(&request, &cache.path().join("anon")).await;
    assert!(trap.hits() > 0, "the redirect test does not redirect");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_needs_an_opt_in_and_never_carries_credentials() -> TestResult {
    let servers = plumb_testsupport::git::GitServers::start()?;
    let repo = servers.create_repo("internal")?;
    let tree = repo.work_tree()?;
    tree.write("a", "1\n")?;
    let commit = tree.commit("one", &Signing::None)?;
    tree.push()?;
    let cache = tempfile::tempdir()?;
    let fetcher = Fetcher::new(cache.path());
    let mut request =
        SourceRequest::new(servers.http_url("internal"), GitRef::Branch("main".into()));
    let err = fetcher
        .fetch(&request, &cache.path().join("refused"))
        .await
        .expect_err("plain http refused by default");
    assert_eq!(err.metric_label(), "fetch_invalid_url", "{err}");
    assert!(err.to_string().contains("plain http"), "{err}");

    request.options.allow_insecure_http = true;
    let artifact = fetcher.fetch(&request, &cache.path().join("ok")).await?;
    assert_eq!(artifact.commit, commit);

    request.options.credentials = plumb_source::Credentials::Basic {
        username: "u".into(),
        password: "p4ss".to_owned().into(),
    };
    let err = fetcher
        .fetch(&request, &cache.path().join("creds"))
        .await
        .expect_err("credentials over http refused");
    assert_eq!(
        err.metric_label(),
        "fetch_insecure_with_credentials",
        "{err}"
    );
    Ok(())
}
