//! Plumb's Kubernetes I/O: discovery, server-side apply, prune, waits.
