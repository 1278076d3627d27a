//! Shared test harness (each test binary uses the parts it needs).

pub mod moto;
pub mod mount;
