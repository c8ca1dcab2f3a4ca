//! Plumb's in-cluster agent: reconcilers for GitSource and Sync.
