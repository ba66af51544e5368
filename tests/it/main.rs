//! Integration tests against real Redis and PostgreSQL, one module per feature.

mod bad_input;
mod endpoint;
mod helpers;
mod reliability;
mod server_schema;
mod shutdown;
mod warming;
