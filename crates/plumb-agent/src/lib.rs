//! Plumb's in-cluster agent: the `GitSource`, `ChartSource` and `Sync` API and their reconcilers, leader
//! election, the webhook receiver, metrics and health endpoints.

#![warn(clippy::unwrap_used)]

pub mod api;
pub mod artifacts;
pub mod chartsource;
pub mod context;
pub mod drift;
pub mod error;
pub mod finalize;
pub mod gitsource;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod policy;
pub mod runner;
pub mod status;
pub mod supersede;
pub mod syncs;
pub mod webhook;
