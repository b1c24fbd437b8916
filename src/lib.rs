//! contabo-gateway: one HTTP gateway in front of the Contabo API for every internal team.
//!
//! The router and its layers are assembled in [`app`]; the stages of a Contabo call are walked in
//! order in [`pipeline`].

pub mod admin;
pub mod app;
pub mod audit;
pub mod auth_throttle;
pub mod backoff;
pub mod cache;
pub mod cli;
pub mod client_address;
pub mod clients;
pub mod config;
pub mod connection;
pub mod console;
pub mod error;
pub mod gateway;
pub mod metrics;
pub mod pipeline;
pub mod ratelimit;
pub mod redact;
pub mod redis_link;
pub mod reload;
pub mod request_id;
pub mod role;
pub mod routes;
pub mod sandbox;
pub mod shutdown;
pub mod signed_checkpoint;
pub mod team_token;
pub mod telemetry;
pub mod tls;
pub mod token_endpoint;
pub mod upstream;
