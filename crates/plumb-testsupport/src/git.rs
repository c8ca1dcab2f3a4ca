//! Real Git servers for tests (written next).
