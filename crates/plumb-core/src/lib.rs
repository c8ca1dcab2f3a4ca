//! Plumb's types and pure logic: manifests, inventory, planning, health, diff.
