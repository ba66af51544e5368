//! Integration tests against real Redis and PostgreSQL, one module per feature.

mod acl;
mod bad_input;
mod chaos;
mod chaos_support;
mod check_config;
mod convert_differential;
mod endpoint;
mod helpers;
mod in_hand;
mod jwks;
mod outbox;
mod parser_props;
mod pgbouncer;
mod private_postgres;
mod redis_cost;
mod reliability;
mod security;
mod series;
mod server_schema;
mod shutdown;
mod warm;
mod warming;
