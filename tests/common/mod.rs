//! Shared test harness (each test binary uses the parts it needs).

pub mod cloudtrail;
pub mod crashkit;
pub mod kmskit;
pub mod moto;
pub mod mount;
pub mod ops;
