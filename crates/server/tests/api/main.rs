//! API tests: a real server on a loopback port, spoken to over HTTP.

mod catalogue;
mod corpus;
mod limits;
mod openapi;
mod tracks;
mod util;
