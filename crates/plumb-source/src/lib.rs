//! Git sources for Plumb: fetch, refs, signature verification.
