//! The `mailroom` command: run the stack (all services in one process, or
//! one service), administer it, check configuration files, and send and
//! read mail as a client (`mailroom mail …`, [`mail_cli`]).
//!
//! The binary is a thin shell over this library so that end-to-end tests
//! drive exactly the code a user runs, in-process, on port 0.

pub mod admin_cli;
pub mod cli;
pub mod mail_cli;
pub mod serve;

pub use cli::{Cli, run};
pub use serve::{ServiceName, Stack, start};
