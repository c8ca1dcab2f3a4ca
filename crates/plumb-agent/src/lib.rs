//! Plumb's in-cluster agent: the `GitSource` and `Sync` API and their reconcilers.

pub mod api;
