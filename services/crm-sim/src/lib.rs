#![allow(clippy::result_large_err)] // axum Responses are the natural error of a handler helper.
//! crm-sim: local stand-ins for the HubSpot, Salesforce, Zoho CRM and Pipedrive APIs as
//! documented in CRM-APIS.md (endpoints, bodies, limits, headers, errors), served from one
//! process under `/hubspot`, `/salesforce`, `/zoho` and `/pipedrive`, plus an `/admin` API that
//! is not part of any CRM. Nothing in the pipeline knows it is not the real CRM but its URL.

pub mod admin;
pub mod clock;
pub mod crms;
pub mod faults;
pub mod gate;
pub mod hubspot;
pub mod limits;
pub mod pipedrive;
pub mod salesforce;
pub mod sql;
pub mod state;
pub mod tokens;
pub mod users;
pub mod window;
pub mod zoho;

use axum::Router;
pub use state::{Crm, SharedSim, Sim};

pub fn app(sim: SharedSim) -> Router {
    Router::new()
        .nest("/hubspot", hubspot::router(sim.clone()))
        .nest("/salesforce", salesforce::router(sim.clone()))
        .nest("/zoho", zoho::router(sim.clone()))
        .nest("/pipedrive", pipedrive::router(sim.clone()))
        .nest("/admin", admin::router(sim))
}
