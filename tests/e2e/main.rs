//! End-to-end tests, one binary: the real `pglive` binary and the
//! library's example against real servers, sharing one set of helpers.

mod bad_input;
mod cli_output;
mod corpus;
mod ddl;
mod example;
mod faults;
mod fence;
mod join;
mod migrate;
mod timescale;
mod util;
mod verify;
mod versions;
