//! contabo-gateway: one HTTP gateway in front of the Contabo API for every internal team.
//!
//! The request pipeline is assembled in [`app`] and walked, stage by stage, in [`pipeline`].

pub mod clients;
pub mod config;
pub mod error;
pub mod request_id;
pub mod routes;
