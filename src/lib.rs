//! keygate: an API-key gateway for Cloudflare Workers. Everything but `edge` is plain Rust that
//! builds and tests natively; `edge` adapts it to workers-rs and exists only on wasm32.

pub mod admin;
pub mod bundled;
pub mod cache;
pub mod console;
pub mod credential;
pub mod credits;
pub mod decide;
pub mod forward;
pub mod ip;
pub mod key;
pub mod limits;
pub mod log;
pub mod oauth;
pub mod openapi;
pub mod path;
pub mod policy;
pub mod problem;
pub mod record;
pub mod registry;
pub mod request_url;
pub mod revocation;
pub mod scope;
pub mod store;
pub mod time;
pub mod token;
pub mod usage;
pub mod verify;

#[cfg(target_arch = "wasm32")]
mod edge;

/// The crate version, reported by `GET /healthz`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
