//! The `pglive` command (being written).
fn main() {}
