//! Throwaway PostgreSQL clusters (being written).
#![deny(missing_docs)]
