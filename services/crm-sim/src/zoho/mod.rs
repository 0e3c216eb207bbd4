pub mod limits;
use crate::state::{Account, Record, Schema, SharedSim};
use axum::Router;
pub fn schema() -> Schema { Schema::new() }
pub fn new_id(acct: &mut Account) -> String { acct.next_seq().to_string() }
pub fn derive(_object: &str, _r: &mut Record) {}
pub fn router(_sim: SharedSim) -> Router { Router::new() }
