//! The monitoring path: everything that looks at instances and the host without
//! changing them. `monitor` probes each live instance (health every interval, a full
//! sample every metrics interval); `health` turns a probe into a verdict;
//! `observations` keeps the last samples; `host` samples the host and finds what is
//! wrong with it (preflight); `metrics` serves all of it at `/metrics`, the instances' lines pre-rendered by
//! `exposition`.

pub mod exposition;
pub mod health;
pub mod host;
pub mod lines;
pub mod metrics;
pub mod monitor;
pub mod observations;
