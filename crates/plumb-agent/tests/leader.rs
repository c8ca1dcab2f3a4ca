//! Leader election against the real control plane: two replicas on one Lease.

use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use plumb_agent::leader::LeaderElection;
use plumb_testsupport::kube::{TestNamespace, client};

const LEASE: &str = "plumb-agent-leader";
const DURATION: Duration = Duration::from_secs(3);
/// Takeover must happen within the lease duration; allow 3x for a loaded machine.
const TAKEOVER: Duration = Duration::from_secs(9);

async fn wait_leader(elector: &LeaderElection, within: Duration) -> Result<()> {
    let mut changes = elector.changes();
    tokio::time::timeout(within, changes.wait_for(|leader| *leader))
        .await
        .with_context(|| {
            format!(
                "{} did not become leader within {within:?}",
                elector.identity()
            )
        })?
        .context("election task ended")?;
    Ok(())
}

async fn holder(client: &Client, namespace: &str) -> Result<Option<String>> {
    let lease = Api::<Lease>::namespaced(client.clone(), namespace)
        .get(LEASE)
        .await?;
    Ok(lease.spec.and_then(|s| s.holder_identity))
}

/// Starts two replicas and returns them as (leader, follower) once one leads, after checking
/// for a while that never both lead and that the Lease names the leader.
async fn two_replicas(
    client: &Client,
    namespace: &str,
) -> Result<(LeaderElection, LeaderElection)> {
    let a = LeaderElection::start(client.clone(), namespace, LEASE, "replica-a", DURATION).await?;
    let b = LeaderElection::start(client.clone(), namespace, LEASE, "replica-b", DURATION).await?;
    tokio::time::timeout(TAKEOVER, async {
        while !a.is_leader() && !b.is_leader() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .context("neither replica became leader")?;
    // Through more than one renewal: exactly one leads, always the same one.
    let first_a = a.is_leader();
    for _ in 0..40 {
        assert!(
            a.is_leader() != b.is_leader(),
            "exactly one replica must lead (a: {}, b: {})",
            a.is_leader(),
            b.is_leader()
        );
        assert_eq!(
            a.is_leader(),
            first_a,
            "leadership flapped without a failure"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (leader, follower) = if a.is_leader() { (a, b) } else { (b, a) };
    assert_eq!(
        holder(client, namespace).await?.as_deref(),
        Some(leader.identity())
    );
    Ok((leader, follower))
}

#[tokio::test]
async fn released_leadership_passes_to_the_other_replica() -> Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "leader-release").await?;
    let (leader, follower) = two_replicas(&client, ns.name()).await?;
    let new_leader = follower.identity().to_owned();

    let started = std::time::Instant::now();
    leader.release().await;
    wait_leader(&follower, TAKEOVER).await?;
    eprintln!("takeover after release: {:?}", started.elapsed());
    assert_eq!(holder(&client, ns.name()).await?, Some(new_leader));
    Ok(())
}

#[tokio::test]
async fn a_crashed_leader_is_replaced_after_its_lease_expires() -> Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "leader-crash").await?;
    let (leader, follower) = two_replicas(&client, ns.name()).await?;
    let new_leader = follower.identity().to_owned();

    // Dropping stops renewing without releasing: the Lease still names the old leader.
    let old = leader.identity().to_owned();
    drop(leader);
    assert_eq!(holder(&client, ns.name()).await?, Some(old));
    assert!(!follower.is_leader());

    let started = std::time::Instant::now();
    wait_leader(&follower, TAKEOVER).await?;
    eprintln!("takeover after crash: {:?}", started.elapsed());
    assert_eq!(holder(&client, ns.name()).await?, Some(new_leader));
    Ok(())
}

#[tokio::test]
async fn a_lone_replica_leads_and_steps_down_on_release() -> Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "leader-lone").await?;
    let only = LeaderElection::start(client.clone(), ns.name(), LEASE, "only", DURATION).await?;
    wait_leader(&only, TAKEOVER).await?;
    let changes = only.changes();
    only.release().await;
    assert!(!*changes.borrow(), "a released replica no longer leads");
    assert_eq!(holder(&client, ns.name()).await?, None);
    Ok(())
}
