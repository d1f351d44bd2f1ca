//! Shared by the fuzz targets: the invariants they check.
pub mod checks;
