//! The operator commands beside `serve`: [`status`] prints what the status
//! page shows, [`warm`] pre-pulls images into a running mirror through its
//! registry API, and [`doctor`] runs the troubleshooting runbook against a
//! configuration. Each writes to the writer it is given and returns
//! whether everything succeeded; `main` maps that to the exit code.
//! [`check`] (`pullthrough config --check`) returns its one-line verdict
//! on a configuration instead.

pub mod check;
pub mod doctor;
pub mod image;
pub mod status;
pub mod warm;
