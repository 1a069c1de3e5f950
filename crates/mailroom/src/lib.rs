//! The `mailroom` command: run the stack (all services in one process, or
//! one service), administer it, and check configuration files.
//!
//! The binary is a thin shell over this library so that end-to-end tests
//! drive exactly the code a user runs, in-process, on port 0.

pub mod admin_cli;
pub mod cli;
pub mod serve;

pub use cli::{Cli, run};
pub use serve::{ServiceName, Stack, start};
